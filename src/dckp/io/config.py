"""Settings of `dckp import` and `dckp export`, with `cpu` and `paper` presets (they differ in the image
height frames are resized to). Light: no torch, so the CLI builds its flags from it quickly."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.config import option
from dckp.errors import DckpError

LAYOUTS = ("tum", "folder")


@dataclass
class ImportConfig:
    """How a recording becomes a views file (docs/own-data.md)."""

    layout: str = option("auto", "recording layout: TUM RGB-D, a plain folder, or told apart by rgb.txt",
                         choices=("auto", *LAYOUTS))
    depth_scale: float = option(0.0, "depth units per metre; 0: the layout's own (5000 for TUM, 1000 for a "
                                "folder's 16-bit PNG, 1 for .npy)")
    intrinsics: list[float] = option([], "fx fy cx cy of the colour camera (pixels) for every sequence; none: "
                                     "each sequence's intrinsics.json")
    intrinsics_file: str = option("", "an intrinsics.json for every sequence; '': each sequence's own")
    pose_axes: str = option("opencv", "axes of the given camera frames: OpenCV (x right, y down, z forward) or "
                            "OpenGL/ARKit/NeRF (x right, y up, z backward), turned into OpenCV",
                            choices=("opencv", "opengl"))
    max_time_diff: float = option(0.02, "TUM: colour, depth and pose are associated within this (seconds)")
    every: int = option(1, "keep every Nth frame")
    height: int = option(128, "resize frames to this height, the width in proportion, K scaled to match "
                         "(0: keep)")
    workspace_min: list[float] = option([], "world box holding the table top and the objects, low corner x y z "
                                        "(metres); none: estimated from the table plane and the points above it")
    workspace_max: list[float] = option([], "world box, high corner x y z (metres); none: estimated")
    scene_radius: float = option(0.75, "box estimate: points this far from where the cameras look (metres)")
    max_object_height: float = option(0.3, "box estimate: objects rise at most this far above the table (metres)")
    workspace_margin: float = option(0.03, "box estimate: margin around the points above the table (metres)")
    objects: list[str] = option([], "names of the objects in the scenes, stored with their number; none: "
                                "unknown")
    task: str = option("recording", "name stored as the file's task (not one of the simulator's)")
    skip_bad_frames: bool = option(False, "leave out frames without valid depth or whose median depth is outside "
                                   "0.005-20 m (each named in a warning) instead of stopping at the first")

    def __post_init__(self):
        if self.layout not in ("auto", *LAYOUTS):
            raise DckpError(f"must be auto, tum or folder, got {self.layout!r}", field="layout")
        if self.pose_axes not in ("opencv", "opengl"):
            raise DckpError(f"must be opencv or opengl, got {self.pose_axes!r}", field="pose_axes")
        if self.depth_scale < 0:
            raise DckpError(f"must be >= 0, got {self.depth_scale}", field="depth_scale")
        if self.intrinsics and (len(self.intrinsics) != 4 or min(self.intrinsics[:2]) <= 0):
            raise DckpError(f"expected fx fy cx cy with fx, fy > 0, got {self.intrinsics}", field="intrinsics")
        for name in ("max_time_diff", "scene_radius", "max_object_height"):
            if not getattr(self, name) > 0:
                raise DckpError(f"must be > 0, got {getattr(self, name)}", field=name)
        if self.workspace_margin < 0:
            raise DckpError(f"must be >= 0, got {self.workspace_margin}", field="workspace_margin")
        if self.every < 1:
            raise DckpError(f"must be >= 1, got {self.every}", field="every")
        if self.height != 0 and self.height < 16:
            raise DckpError(f"must be 0 (keep) or >= 16, got {self.height}", field="height")
        if bool(self.workspace_min) != bool(self.workspace_max):
            raise DckpError("give both --workspace-min and --workspace-max, or neither (estimated)",
                            field="workspace_max")
        if self.workspace_min and not (len(self.workspace_min) == len(self.workspace_max) == 3 and all(
                lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max, strict=True))):
            raise DckpError(f"expected 3 numbers each, above {self.workspace_min} on every axis, got "
                            f"{self.workspace_max}", field="workspace_max")


IMPORT_PRESETS = {"cpu": ImportConfig(), "paper": ImportConfig(height=256)}


EXPORT_FORMATS = ("robomimic", *LAYOUTS)


@dataclass
class ExportConfig:
    """How `dckp export` writes a dckp file in another layout: robomimic's HDF5 (demonstrations, for its baselines;
    docs/view-export.md) or RGB-D recordings, one sequence folder per episode (docs/own-data.md)."""

    format: str = option("robomimic", "layout written: robomimic (a demos file into one .hdf5) or a recording "
                         "layout, folder or tum (one sequence folder per episode)", choices=EXPORT_FORMATS)
    stream: str = option("free", "folder, tum: the camera stream exported (views files: free, the moving free "
                         "cameras)")
    depth: bool = option(True, "robomimic: write each camera's depth as robosuite's normalised z-buffer")
    depth_planes: list[float] = option([], "robomimic: near and far plane (metres) of that z-buffer; none given: "
                                       "the simulator task's MuJoCo planes (a recording of your own needs them)")
    next_obs: bool = option(True, "robomimic: write next_obs (robomimic's SequenceDataset loads it by default)")
    valid_fraction: float = option(0.1, "robomimic: share of the demonstrations in the filter key mask/valid, the "
                                   "rest in mask/train")
    seed: int = option(0, "robomimic: seed of the train/valid split")

    def __post_init__(self):
        if self.format not in EXPORT_FORMATS:
            raise DckpError(f"unknown format {self.format!r}; choose from {list(EXPORT_FORMATS)}", field="format")
        if self.depth_planes and (len(self.depth_planes) != 2 or not 0 < self.depth_planes[0] < self.depth_planes[1]):
            raise DckpError(f"expected near and far with 0 < near < far, got {self.depth_planes}",
                            field="depth_planes")
        if not 0 <= self.valid_fraction < 1:
            raise DckpError(f"must be in [0, 1), got {self.valid_fraction}", field="valid_fraction")
