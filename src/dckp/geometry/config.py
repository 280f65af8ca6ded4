"""Settings of `dckp fuse` (TSDF fusion, table removal, clustering, mask rendering), with `cpu` and `paper`
presets. Light: no torch, so the CLI builds its flags from it quickly."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.config import option
from dckp.errors import DckpError


@dataclass
class MaskConfig:
    """voxel_size, trunc: TSDF voxel edge and truncation distance (metres). workspace_min/max: world box
    (metres) that is fused and segmented. ransac_iters, ransac_threshold: plane hypotheses and inlier distance
    (metres) for the table; table_max_tilt_deg: the table normal is at most this far from world +z.
    table_clearance: points less than this above the table (metres) are dropped. dbscan_eps, dbscan_min_samples:
    DBSCAN neighbourhood radius (metres) and core-point count; min_cluster_points: smaller clusters are dropped.
    depth_tol: a pixel belongs to an object if the point it sees is this close (metres) to the object's points."""

    voxel_size: float = option(0.005, "TSDF voxel edge (metres)")
    trunc: float = option(0.015, "TSDF truncation distance (metres)")
    workspace_min: list[float] = option([-0.4, -0.4, -0.05], "world box fused and segmented, low corner x y z "
                                        "(metres; `dckp fuse` uses the task's box unless given)")
    workspace_max: list[float] = option([0.4, 0.4, 0.75], "world box, high corner x y z (metres)")
    ransac_iters: int = option(200, "table plane hypotheses (RANSAC)")
    ransac_threshold: float = option(0.004, "table plane inlier distance (metres)")
    table_max_tilt_deg: float = option(20.0, "the table normal is at most this far from world +z (degrees)")
    table_clearance: float = option(0.008, "points less than this above the table are dropped (metres)")
    dbscan_eps: float = option(0.012, "DBSCAN neighbourhood radius (metres)")
    dbscan_min_samples: int = option(5, "DBSCAN core-point count")
    min_cluster_points: int = option(30, "smaller clusters are dropped")
    depth_tol: float = option(0.008, "a pixel is an object's if the point it sees is this close to it (metres)")

    def __post_init__(self):
        for name in ("voxel_size", "trunc", "ransac_threshold", "dbscan_eps", "depth_tol"):
            if not getattr(self, name) > 0:
                raise DckpError(f"must be > 0, got {getattr(self, name)}", field=name)
        for name in ("ransac_iters", "dbscan_min_samples", "min_cluster_points"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if not 0 <= self.table_max_tilt_deg < 90:
            raise DckpError(f"must be in [0, 90), got {self.table_max_tilt_deg}", field="table_max_tilt_deg")
        if self.trunc <= self.voxel_size:
            raise DckpError(f"must be larger than voxel_size ({self.voxel_size}), got {self.trunc}", field="trunc")
        for name in ("workspace_min", "workspace_max"):
            if len(getattr(self, name)) != 3:
                raise DckpError(f"expected 3 numbers, got {getattr(self, name)}", field=name)
        if not all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max, strict=True)):
            raise DckpError(f"must be above workspace_min {self.workspace_min} on every axis, got "
                            f"{self.workspace_max}", field="workspace_max")


MASK_PRESETS = {
    "cpu": MaskConfig(),
    "paper": MaskConfig(voxel_size=0.004, trunc=0.012, ransac_iters=500, ransac_threshold=0.003,
                        table_clearance=0.006, dbscan_eps=0.01, min_cluster_points=50, depth_tol=0.006),
}
