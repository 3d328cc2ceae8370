"""testbed: a JAX testbed for deriving scaling laws from small transformers."""

__version__ = "0.1.0"
