"""segadapt: adapt a segmentation network to a new, unlabelled image domain by regressing feature maps."""

__version__ = "0.1.0"
