"""Keypoints from Dense Object Net descriptors: reference descriptors, 2D keypoints and their 3D variants.

Names are imported on first use, so importing the package loads no torch."""

from dckp.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "dckp.keypoints.extract": ("depth_at", "descriptor_distance", "extract_keypoints", "heatmap", "keypoints_3d",
                               "normalise_uv"),
    "dckp.keypoints.references": ("load_pixels", "references_at", "sample_references"),
})
