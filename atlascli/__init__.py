"""atlas: align an unknown language model to a labeled Concept Atlas (Atlas-Alignment)."""

__version__ = "0.1.0"
