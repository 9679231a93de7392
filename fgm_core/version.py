"""The fgm version (a leaf module, so any layer of the core may read it)."""

__version__ = "0.1.0"
