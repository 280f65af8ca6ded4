"""Self-supervised geometry for Dense Object Net training: cameras, pixel correspondences from depth and poses,
TSDF fusion, and object masks without labels. Conventions: docs/conventions.md.

Names are imported on first use, so `dckp.geometry.config` loads without torch (the CLI builds its flags from it)."""

from dckp.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "dckp.geometry.camera": ("backproject", "pixel_grid", "project", "transform", "unproject"),
    "dckp.geometry.config": ("MASK_PRESETS", "MaskConfig"),
    "dckp.geometry.correspondence": ("CORRESPONDENCE_PRESETS", "CorrespondenceConfig", "find_matches",
                                     "sample_matches", "sample_non_matches", "warp_pixels"),
    "dckp.geometry.masks": ("mask_iou_matched", "render_instance_masks", "segment_objects"),
    "dckp.geometry.tsdf": ("TSDFVolume", "allocate", "extract_surface_points", "integrate", "make_volume"),
})
