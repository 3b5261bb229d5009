"""`python -m atlascli ...` (also what torchrun / accelerate launch run)."""

from atlascli.cli.main import entry

entry()
