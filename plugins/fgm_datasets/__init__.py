"""Built-in datasets: 2-D mixtures (PacGAN ring8/grid25), swiss roll, procedural shapes,
IDX (Fashion-MNIST), image folders and user arrays (.npy/.npz/.csv).

Every factory takes a :class:`fgm_core.components.DataRequest` and returns a
:class:`fgm_core.components.DataBundle` in data units; options are validated strictly.
"""

from __future__ import annotations

from fgm_core.hookspecs import hookimpl

from .arrays import array
from .idx import idx
from .images import images
from .mixtures import grid25, ring8, swissroll
from .shapes import shapes

__all__ = ["array", "grid25", "idx", "images", "register_datasets", "ring8", "shapes", "swissroll"]


@hookimpl
def register_datasets(register) -> None:
    """Register the built-in datasets."""
    register("ring8", ring8, "8 Gaussians on the unit circle, std 0.01 (PacGAN protocol)")
    register("grid25", grid25, "25 Gaussians on {-4,-2,0,2,4}^2, std 0.05 (PacGAN protocol)")
    register("swissroll", swissroll, "2-D swiss roll with Gaussian noise")
    register("shapes", shapes, "procedural 28x28 images: 4 shapes x 2 sizes = 8 classes, no files")
    register("idx", idx, "MNIST-format IDX files (default: Fashion-MNIST under /usr/share/datasets)")
    register("images", images, "a folder of PNG/JPEG images, one subfolder per class for labels")
    register("array", array, "vectors or images from a .npy, .npz or .csv file")
