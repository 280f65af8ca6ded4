"""HDF5 datasets, one file per collection, robomimic-like. The schema is documented in docs/dataset.md.

    /data/<episode>/obs/<stream>_rgb    (T,H,W,3) uint8, one frame per chunk, gzip
    /data/<episode>/obs/<stream>_depth  (T,H,W) uint16 in units of the file's `depth_scale` metres, 0 = invalid
                                        (float32 metres is accepted too, for data from other sources)
    /data/<episode>/obs/<stream>_seg    (T,H,W) uint8 ground truth, for measuring only
    /data/<episode>/obs/<stream>_K      (T,3,3) float32      /data/<episode>/obs/<stream>_pose (T,4,4) float32
    /data/<episode>/obs/<proprio key>   (T,...) float32      /data/<episode>/actions (T,7) float32 (demos)

Writes are atomic (a temp file renamed on success); reads are lazy, frame by frame; bad files give one-line
errors naming the file and the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from dckp.config import temp_beside
from dckp.errors import DckpError

SCHEMA_VERSION = 1
DEPTH_SCALE = 1e-4  # metres per unit of stored uint16 depth: 0.1 mm steps up to 6.55 m
IMAGE_SUFFIXES = ("_rgb", "_depth", "_seg")
CAMERA_SUFFIXES = IMAGE_SUFFIXES + ("_K", "_pose")
FILE_ATTRS = ("schema_version", "kind", "task", "objects", "config")
MADE_BY = {"demos": "`dckp collect`", "views": "`dckp collect-views`"}  # the command that writes each kind


def encode_depth(depth: np.ndarray, where: str = "depth") -> np.ndarray:
    """Metric float depth -> uint16 in DEPTH_SCALE units; out of range and invalid become 0."""
    depth = np.asarray(depth, dtype=np.float32)
    if np.isnan(depth).any():
        raise DckpError("depth contains NaN (use 0 for invalid pixels)", field=where)
    units = np.rint(depth / DEPTH_SCALE)
    units[(units < 0) | (units > np.iinfo(np.uint16).max)] = 0
    return units.astype(np.uint16)


def check_workspace(workspace, path: str | None = None, field: str = "workspace") -> list[list[float]]:
    """`[[x, y, z], [x, y, z]]` (low and high corner, metres) from any pair of 3-vectors, low < high on every axis;
    DckpError otherwise."""
    try:
        lo, hi = ([float(x) for x in corner] for corner in workspace)
        ok = len(lo) == len(hi) == 3 and all(np.isfinite(lo + hi)) and all(a < b for a, b in zip(lo, hi, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DckpError(f"expected [[x, y, z], [x, y, z]] with low < high on every axis, got {workspace!r}",
                        path=path, field=field)
    return [lo, hi]


class DatasetWriter:
    """Writes a collection to a temp file beside `path` and renames it into place on `close()`.

    An interrupted collection leaves no file at `path` (or the previous one, untouched).
    """

    def __init__(self, path: str | os.PathLike, kind: str, task: str, objects: list[str], config: dict,
                 workspace=None, num_objects: int | None = None):
        """`workspace`: the world box `(lo, hi)` (metres) holding the table top and the objects, stored for the
        stages after it (`dckp fuse`, `dckp keypoints`); `num_objects` defaults to `len(objects)` (0: unknown)."""
        self.path = Path(path)
        self._tmp = temp_beside(self.path)
        self._f = h5py.File(self._tmp, "w")
        self._f.attrs.update(schema_version=SCHEMA_VERSION, kind=kind, task=task, depth_scale=DEPTH_SCALE,
                             objects=json.dumps(objects), config=json.dumps(config, sort_keys=True),
                             num_objects=len(objects) if num_objects is None else int(num_objects))
        if workspace is not None:
            self._f.attrs["workspace"] = json.dumps(check_workspace(workspace))
        self._data = self._f.create_group("data")
        self.bytes_images = 0
        self.frames = 0

    def add_episode(self, name: str, obs: dict[str, np.ndarray], actions: np.ndarray | None = None,
                    **attrs) -> None:
        """`obs` maps keys to arrays stacked over time; depth may be float metres (encoded here)."""
        grp = self._data.create_group(name)
        grp.attrs.update(attrs)
        og = grp.create_group("obs")
        for key, value in obs.items():
            value = np.asarray(value)
            if key.endswith("_depth") and value.dtype != np.uint16:
                value = encode_depth(value, where=f"{name}/obs/{key}")
            if key.endswith(IMAGE_SUFFIXES):
                ds = og.create_dataset(key, data=value, chunks=(1,) + value.shape[1:], compression="gzip",
                                       compression_opts=4, shuffle=True)
                self.bytes_images += ds.id.get_storage_size()
                if key.endswith("_rgb"):
                    self.frames += len(value)
            else:
                if value.dtype.kind == "f":
                    value = value.astype(np.float32)
                og.create_dataset(key, data=value)
        if actions is not None:
            grp.create_dataset("actions", data=np.asarray(actions, np.float32))

    def close(self) -> Path:
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._f.close()
        Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Dataset:
    """Lazy read access to a dckp HDF5 file. Opening checks the schema; frames are read on demand.

    `name` is the path that error messages give (the user's file, when `path` is a temp copy of it)."""

    def __init__(self, path: str | os.PathLike, name: str | os.PathLike | None = None):
        self.path = str(name or path)
        if not Path(path).is_file():
            raise DckpError("file not found", path=self.path)
        try:
            self.f = h5py.File(path, "r")
        except OSError:
            raise DckpError("not a readable HDF5 file (truncated or corrupt?); make it again", path=self.path) from None
        self._check_file()

    def _err(self, message: str, field: str) -> DckpError:
        return DckpError(message, path=self.path, field=field)

    def _check_file(self) -> None:
        if not any(key in self.f.attrs for key in FILE_ATTRS):
            raise DckpError("not a dckp dataset (no schema attributes); expected a demos file from `dckp collect` "
                            "or a views file from `dckp collect-views`", path=self.path)
        for key in FILE_ATTRS:
            if key not in self.f.attrs:
                raise self._err("missing file attribute", key)
        if self.f.attrs["schema_version"] != SCHEMA_VERSION:
            raise self._err(f"schema version {self.f.attrs['schema_version']}, expected {SCHEMA_VERSION}",
                            "schema_version")
        if "data" not in self.f:
            raise self._err("missing group", "data")
        self.attrs = dict(self.f.attrs)
        self.kind, self.task = str(self.attrs["kind"]), str(self.attrs["task"])
        self.objects = json.loads(self.attrs["objects"])
        self.config = json.loads(self.attrs["config"])
        self.depth_scale = float(self.attrs.get("depth_scale", DEPTH_SCALE))

    @property
    def workspace(self) -> list[list[float]] | None:
        """The world box `[[x, y, z], [x, y, z]]` (metres) holding the table top and the objects: the file's
        `workspace` attribute, or None (files written before it existed: `dckp.sim.tasks.workspace_of`)."""
        if "workspace" not in self.attrs:
            return None
        try:
            box = json.loads(self.attrs["workspace"])
        except (TypeError, ValueError):
            box = self.attrs["workspace"]
        return check_workspace(box, path=self.path)

    @property
    def num_objects(self) -> int:
        """How many objects the scenes hold: the file's `num_objects` attribute (older files: the number of
        names in `objects`); 0 = not known."""
        return int(self.attrs.get("num_objects", len(self.objects)))

    def expect(self, kind: str) -> None:
        """Reject a file of another kind ("demos" or "views") with a line saying which file is needed."""
        if self.kind != kind:
            raise DckpError(f"expected a {kind} file from {MADE_BY.get(kind, 'dckp')}, got a {self.kind} file",
                            path=self.path)

    def pick_episode(self, episode: str | None) -> str:
        """`episode`, checked to exist, or the first episode when None."""
        episodes = self.episodes
        if not episodes:
            raise self._err("no episodes", "data")
        if episode is None:
            return episodes[0]
        if episode not in episodes:
            raise DckpError(f"no episode {episode!r} (have {episodes[0]}..{episodes[-1]})", path=self.path)
        return episode

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def episodes(self) -> list[str]:
        """Episode names in numeric order (demo_0, demo_1, ... or scene_0, ..., then arm_0, ...)."""
        return sorted(self.f["data"], key=lambda n: (n.startswith("arm_"), n.rsplit("_", 1)[0],
                                                     int(n.rsplit("_", 1)[1])))

    def _obs(self, episode: str) -> h5py.Group:
        field = f"data/{episode}/obs"
        if field not in self.f:
            raise self._err("missing group", field)
        return self.f[field]

    def keys(self, episode: str) -> list[str]:
        """The names in an episode's `obs` group."""
        return list(self._obs(episode))

    def episode_attrs(self, episode: str) -> dict:
        return dict(self.f[f"data/{episode}"].attrs)

    def streams(self, episode: str) -> list[str]:
        """Camera streams of an episode (named cameras, or `free` for moving free cameras)."""
        return sorted(k[: -len("_rgb")] for k in self._obs(episode) if k.endswith("_rgb"))

    def num_frames(self, episode: str, stream: str) -> int:
        return len(self._dataset(episode, f"{stream}_rgb"))

    def _dataset(self, episode: str, key: str) -> h5py.Dataset:
        obs = self._obs(episode)
        if key not in obs:
            raise self._err("missing key", f"data/{episode}/obs/{key}")
        return obs[key]

    def frame(self, episode: str, stream: str, t: int) -> dict[str, np.ndarray]:
        """One frame: rgb uint8 (H,W,3), depth float32 metres (0 invalid), seg uint8 (if stored), K, pose."""
        out = {}
        for suffix in CAMERA_SUFFIXES:
            key = f"{stream}_{suffix[1:]}"
            if suffix == "_seg" and key not in self._obs(episode):
                continue
            ds = self._dataset(episode, key)
            try:
                value = ds[t]
            except (OSError, ValueError, IndexError) as e:
                raise self._err(f"cannot read frame {t} ({e})", f"data/{episode}/obs/{key}") from None
            out[suffix[1:]] = value
        out["depth"] = self._depth(out["depth"], f"data/{episode}/obs/{stream}_depth")
        self._check_frame(out, f"data/{episode}/obs/{stream}")
        return out

    def frames(self, episode: str, stream: str, key: str, start: int, stop: int) -> np.ndarray:
        """Frames `start..stop-1` of one camera array (`rgb`, `depth` in metres, `seg`, `K` or `pose`), stacked."""
        field = f"data/{episode}/obs/{stream}_{key}"
        try:
            value = self._dataset(episode, f"{stream}_{key}")[start:stop]
        except (OSError, ValueError) as e:
            raise self._err(f"cannot read frames {start}..{stop - 1} ({e})", field) from None
        return self._depth(value, field) if key == "depth" else value

    def _depth(self, raw: np.ndarray, field: str) -> np.ndarray:
        if raw.dtype == np.uint16:
            return raw.astype(np.float32) * np.float32(self.depth_scale)
        depth = raw.astype(np.float32)
        if np.isnan(depth).any():
            raise self._err("depth contains NaN", field)
        return depth

    def _check_frame(self, fr: dict, field: str) -> None:
        h, w = fr["rgb"].shape[:2]
        if fr["rgb"].shape != (h, w, 3) or fr["rgb"].dtype != np.uint8:
            raise self._err(f"rgb must be uint8 (H,W,3), got {fr['rgb'].dtype} {fr['rgb'].shape}", field + "_rgb")
        if fr["depth"].shape != (h, w):
            raise self._err(f"depth shape {fr['depth'].shape} does not match rgb {(h, w)}", field + "_depth")
        if "seg" in fr and fr["seg"].shape != (h, w):
            raise self._err(f"seg shape {fr['seg'].shape} does not match rgb {(h, w)}", field + "_seg")
        for key, shape in (("K", (3, 3)), ("pose", (4, 4))):
            if fr[key].shape != shape:
                raise self._err(f"expected shape {shape}, got {fr[key].shape}", f"{field}_{key}")
            if not np.isfinite(fr[key]).all():
                raise self._err("contains NaN or inf", f"{field}_{key}")

    def array(self, episode: str, key: str) -> np.ndarray:
        """A whole low-dimensional array (proprioception, poses, intrinsics) of an episode."""
        value = self._dataset(episode, key)[()]
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise self._err("contains NaN or inf", f"data/{episode}/obs/{key}")
        return value

    def actions(self, episode: str) -> np.ndarray:
        field = f"data/{episode}/actions"
        if field not in self.f:
            raise self._err("missing key", field)
        value = self.f[field][()]
        if value.ndim != 2 or value.shape[1] != 7:
            raise self._err(f"expected shape (T, 7), got {value.shape}", field)
        if not np.isfinite(value).all():
            raise self._err("contains NaN or inf", field)
        return value

    def validate(self, every_frame: bool = True) -> None:
        """Check every episode and stream (a stream whose depth is 0 in every frame is rejected too); raises
        DckpError at the first problem. `every_frame` reads every frame (a file from elsewhere); without it, each
        stream is read up to its first frame with depth (a file that dckp wrote whole, checked on each start)."""
        if not self.episodes:
            raise self._err("no episodes", "data")
        for ep in self.episodes:
            streams = self.streams(ep)
            if not streams:
                raise self._err("no camera streams", f"data/{ep}/obs")
            for stream in streams:
                n = self.num_frames(ep, stream)
                for suffix in CAMERA_SUFFIXES:
                    key = f"{stream}{suffix}"
                    if suffix == "_seg" and key not in self._obs(ep):
                        continue
                    if len(self._dataset(ep, key)) != n:
                        raise self._err(f"{len(self._dataset(ep, key))} frames, expected {n}",
                                        f"data/{ep}/obs/{key}")
                depth_seen = False
                for t in range(n):
                    depth_seen |= bool((self.frame(ep, stream, t)["depth"] > 0).any())
                    if depth_seen and not every_frame:
                        break
                if not depth_seen:
                    raise self._err("depth is 0 (invalid) in every frame: re-record it with a working depth camera",
                                    f"data/{ep}/obs/{stream}_depth")
            if self.kind == "demos":
                actions = self.actions(ep)
                n = self.num_frames(ep, streams[0])
                if len(actions) != n:
                    raise self._err(f"{len(actions)} actions for {n} frames", f"data/{ep}/actions")
