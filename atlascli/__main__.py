"""`python -m atlascli ...` (also what torchrun / accelerate launch run)."""

import sys

from atlascli.cli.main import main

sys.exit(main())
