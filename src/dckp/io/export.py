"""`dckp export --format robomimic|folder|tum`: a dckp file in another layout. `robomimic`: demonstrations as
robomimic's HDF5 (`dckp.io.robomimic`). `folder`, `tum`: the frames as RGB-D recordings in the layouts `dckp import`
reads (docs/own-data.md), one sequence folder per episode. Users check their data with them (export a simulator
file, look at the files, import them back), and the round-trip test uses them.

Depth goes out as 16-bit PNG (millimetres in a plain folder, TUM's 1/5000 m), so it comes back within half a unit;
K and poses are written with 9 significant digits, which float32 values survive exactly (TUM's quaternions to
about 1e-7).
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from dckp.data import Dataset
from dckp.errors import DckpError
from dckp.io.config import ExportConfig

FRAME_RATE = 30.0  # Hz: the timestamps written for TUM
UNITS_PER_METRE = {"tum": 5000.0, "folder": 1000.0}


def _depth_png(depth: np.ndarray, units_per_metre: float) -> np.ndarray:
    units = np.rint(depth.astype(np.float64) * units_per_metre)
    units[(units < 0) | (units > np.iinfo(np.uint16).max)] = 0
    return units.astype(np.uint16)


def _intrinsics_json(K: np.ndarray, width: int, height: int) -> str:
    values = {"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}
    return json.dumps({**{k: float(v) for k, v in values.items()}, "width": width, "height": height}, indent=1)


def export_episode(ds: Dataset, episode: str, cfg: ExportConfig, folder: Path) -> int:
    """One episode's `cfg.stream` frames into `folder` in the recording layout `cfg.format`. Returns the number of
    frames."""
    n = ds.num_frames(episode, cfg.stream)
    K, poses = ds.frames(episode, cfg.stream, "K", 0, n), ds.frames(episode, cfg.stream, "pose", 0, n)
    if not (K == K[0]).all():
        raise DckpError("the intrinsics change between frames; a recording holds one camera's",
                        path=ds.path, field=f"data/{episode}/obs/{cfg.stream}_K")
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    (folder / "depth").mkdir(exist_ok=True)
    names = [f"{i / FRAME_RATE:.6f}" if cfg.format == "tum" else f"{i:06d}" for i in range(n)]
    for i, name in enumerate(names):
        fr = ds.frame(episode, cfg.stream, i)
        iio.imwrite(folder / "rgb" / f"{name}.png", fr["rgb"])
        iio.imwrite(folder / "depth" / f"{name}.png", _depth_png(fr["depth"], UNITS_PER_METRE[cfg.format]))
    H, W = fr["depth"].shape
    (folder / "intrinsics.json").write_text(_intrinsics_json(K[0], W, H) + "\n")
    if cfg.format == "folder":
        rows = poses.reshape(n, 16)
        (folder / "poses.txt").write_text("# one 4x4 camera-to-world matrix per frame, row by row, OpenCV axes\n" +
                                          "".join(" ".join(f"{x:.9g}" for x in row) + "\n" for row in rows))
        return n
    for kind in ("rgb", "depth"):
        (folder / f"{kind}.txt").write_text(f"# {kind} images: timestamp filename\n" + "".join(
            f"{name} {kind}/{name}.png\n" for name in names))
    quats = Rotation.from_matrix(poses[:, :3, :3].astype(np.float64)).as_quat()  # x y z w
    (folder / "groundtruth.txt").write_text("# timestamp tx ty tz qx qy qz qw (camera-to-world)\n" + "".join(
        f"{name} " + " ".join(f"{x:.9g}" for x in (*p[:3, 3], *q)) + "\n"
        for name, p, q in zip(names, poses, quats, strict=True)))
    return n


def export_recordings(path: str, cfg: ExportConfig, out: str, progress: bool = True) -> dict:
    """Every episode of the dckp file `path` into `out/<episode>/`. Returns {episode: frames}."""
    with Dataset(path) as ds:
        for episode in ds.episodes:  # before the progress bar: a bad stream is one line
            if cfg.stream not in ds.streams(episode):
                raise DckpError(f"no stream {cfg.stream!r} in {episode} (have {ds.streams(episode)})", path=ds.path,
                                field="stream")
        return {ep: export_episode(ds, ep, cfg, Path(out) / ep)
                for ep in tqdm(ds.episodes, desc=f"export {Path(path).name}", disable=not progress)}


def export(path: str, cfg: ExportConfig, out: str, progress: bool = True) -> dict:
    """The dckp file `path` to `out` in `cfg.format`: robomimic's HDF5 file (`export_robomimic`'s summary), or a
    recording folder per episode (`{"out", "episodes": {episode: frames}}`)."""
    if cfg.format == "robomimic":
        from dckp.io.robomimic import export_robomimic

        return export_robomimic(path, out, cfg, progress)
    return {"out": out, "episodes": export_recordings(path, cfg, out, progress)}
