"""segadapt: adapt a segmentation network to a new, unlabelled image domain by regressing feature maps."""

from segadapt.version import __version__

__all__ = ["__version__"]
