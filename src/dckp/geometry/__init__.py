"""Self-supervised geometry for Dense Object Net training: cameras, pixel correspondences from depth and poses,
TSDF fusion, and object masks without labels. Conventions: docs/conventions.md."""

from dckp.geometry.camera import backproject, pixel_grid, project, transform, unproject
from dckp.geometry.correspondence import (
    CORRESPONDENCE_PRESETS,
    CorrespondenceConfig,
    find_matches,
    sample_matches,
    sample_non_matches,
    warp_pixels,
)
from dckp.geometry.masks import (
    MASK_PRESETS,
    MaskConfig,
    mask_iou_matched,
    render_instance_masks,
    segment_objects,
)
from dckp.geometry.tsdf import TSDFVolume, allocate, extract_surface_points, integrate, make_volume

__all__ = [
    "CORRESPONDENCE_PRESETS", "MASK_PRESETS", "CorrespondenceConfig", "MaskConfig", "TSDFVolume", "allocate",
    "backproject", "extract_surface_points", "find_matches", "integrate", "make_volume", "mask_iou_matched",
    "pixel_grid", "project", "render_instance_masks", "sample_matches", "sample_non_matches",
    "segment_objects", "transform", "unproject", "warp_pixels",
]
