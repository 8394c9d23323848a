"""Datasets: raw sources (synthetic, CamVid, VOC, folder), joint transforms, and the torch wrapper."""

from segadapt.data.base import DatasetInfo, ImageDataset, SegmentationDataset, SegmentationSource, spread_indices
from segadapt.data.datasets import DATASETS, build_dataset, build_source, make_transform
from segadapt.data.transforms import GeoParams, JointTransform

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "GeoParams",
    "ImageDataset",
    "JointTransform",
    "SegmentationDataset",
    "SegmentationSource",
    "build_dataset",
    "build_source",
    "make_transform",
    "spread_indices",
]
