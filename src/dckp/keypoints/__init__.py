"""Keypoints from Dense Object Net descriptors: reference descriptors, 2D keypoints and their 3D variants."""

from dckp.keypoints.extract import (
    depth_at,
    descriptor_distance,
    extract_keypoints,
    heatmap,
    keypoints_3d,
    normalise_uv,
)
from dckp.keypoints.references import load_pixels, references_at, sample_references

__all__ = [
    "depth_at", "descriptor_distance", "extract_keypoints", "heatmap", "keypoints_3d", "load_pixels",
    "normalise_uv", "references_at", "sample_references",
]
