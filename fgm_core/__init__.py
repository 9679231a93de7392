"""fgm: the f-divergence generative model (f-GM) core."""

__version__ = "0.1.0"
