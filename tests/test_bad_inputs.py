"""Every bad input to every command that reads it: exit status 2, one line on stderr naming the user's file (or
the flag), no traceback and no silent acceptance.

The inputs are tiny synthetic files (32 px, a few frames; `make_bad_inputs`). `CASES` and `run_case` are plain
module-level names so a benchmark can count the cases, tracebacks and silent acceptances (`summarise`) without
pytest: `sys.path.insert(0, "tests"); from test_bad_inputs import CASES, make_bad_inputs, summarise`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pytest
from synthetic_scenes import intrinsics, look_at, make_scene, render

from dckp.cli.main import main
from dckp.data import DatasetWriter
from dckp.errors import DckpError

SIZE, FRAMES = 32, 4
WRIST = "robot0_eye_in_hand"


class Case(NamedTuple):
    """`argv` and `names` (what the error line must contain) use `{name}` for the paths of `make_bad_inputs`."""

    name: str
    argv: list[str]
    names: str
    xfail: str = ""  # why it fails today, in code this test's author does not own


def _frames(stream: str, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    scene, K = make_scene(seed, n_objects=1), intrinsics(SIZE, SIZE, 60)
    poses = [look_at([0.4 * np.cos(a), 0.4 * np.sin(a), 0.3], [0, 0, 0.02]) for a in np.linspace(0, 2, n)]
    frames = [render(scene, K, pose, SIZE, SIZE) | {"K": K, "pose": pose} for pose in poses]
    return {f"{stream}_{k}": np.stack([f[k] for f in frames]) for k in ("rgb", "depth", "seg", "K", "pose")}


def _demos(path: Path, **obs) -> None:
    frames = _frames(WRIST, FRAMES) | {"object_pose": np.tile(np.eye(4), (FRAMES, 1, 1, 1))}
    for key, size in (("joint_pos", 7), ("eef_pos", 3), ("eef_quat", 4), ("gripper_qpos", 2)):
        frames[key] = np.zeros((FRAMES, size))
    with DatasetWriter(path, "demos", "lift", ["cube"], {"demos": 1}) as w:
        w.add_episode("demo_0", frames | obs, np.zeros((FRAMES, 7)), seed=0, success=True)


def _views(path: Path, masks: bool, **obs) -> None:
    frames = _frames("free", FRAMES) | {"object_pose": np.tile(np.eye(4), (FRAMES, 1, 1, 1))}
    if masks:  # as `dckp fuse` would give them
        frames["free_mask"] = frames["free_seg"]
    with DatasetWriter(path, "views", "lift", ["cube"], {}) as w:
        w.add_episode("scene_0", frames | obs, seed=0, arm_only=False)


def _replace(src: Path, dst: Path, key: str, value) -> None:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "a") as f:
        del f[key]
        if value is not None:
            f[key] = value


def _truncate(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


def make_bad_inputs(folder: Path) -> dict[str, str]:
    """Write every (good and bad) input of the cases into `folder`; returns {name: path}."""
    import torch

    from dckp.don.checkpoint import save_checkpoint
    from dckp.don.config import DonConfig
    from dckp.don.model import DenseObjectNet
    from dckp.policy import PolicyConfig, train_policy

    f = {name: folder / name for name in (
        "demos.h5", "views.h5", "unfused.h5", "zero_depth.h5", "zero_depth_unfused.h5", "truncated.h5", "text.h5",
        "no_actions.h5", "no_free_depth.h5", "wrong_shape.h5", "nan_depth.h5", "nan_views.h5", "features.h5",
        "don", "don_truncated", "resume_truncated", "policy_truncated")}
    _demos(f["demos.h5"])
    _views(f["views.h5"], masks=True)
    _views(f["unfused.h5"], masks=False)
    zeros = np.zeros((FRAMES, SIZE, SIZE), np.float32)
    _views(f["zero_depth.h5"], masks=True, free_depth=zeros)
    _views(f["zero_depth_unfused.h5"], masks=False, free_depth=zeros)
    _truncate(f["demos.h5"], f["truncated.h5"])
    f["text.h5"].write_text("this is not an HDF5 file\n")
    _replace(f["demos.h5"], f["no_actions.h5"], "data/demo_0/actions", None)
    _replace(f["views.h5"], f["no_free_depth.h5"], "data/scene_0/obs/free_depth", None)
    _replace(f["demos.h5"], f["wrong_shape.h5"], f"data/demo_0/obs/{WRIST}_K", np.zeros((FRAMES, 3, 4)))
    nan = np.ones((FRAMES, SIZE, SIZE), np.float32)
    nan[1, 3, 3] = np.nan
    _replace(f["demos.h5"], f["nan_depth.h5"], f"data/demo_0/obs/{WRIST}_depth", nan)
    _replace(f["views.h5"], f["nan_views.h5"], "data/scene_0/obs/free_depth", nan)
    with h5py.File(f["features.h5"], "w") as h:  # a policy folder's feature cache
        h.attrs["key"] = "{}"
        h["demo_0"] = np.zeros((FRAMES, 5), np.float32)

    cfg = DonConfig(backbone="resnet18", layers=3, descriptor_dim=3, image_size=SIZE, steps=1)
    torch.manual_seed(0)
    save_checkpoint(f["don"] / "don.safetensors", DenseObjectNet(cfg), cfg, 1)
    _truncate(f["don"] / "don.safetensors", f["don_truncated"] / "don.safetensors")
    _truncate(f["don"] / "don.safetensors", f["resume_truncated"] / "last.safetensors")
    from dckp.don.train import load_don
    from dckp.keypoints.select import select_references

    f["refs"] = folder / "refs.safetensors"  # at a hand-picked pixel on the object
    select_references(load_don(f["don"]), f["demos.h5"], f["refs"], pixels={WRIST: np.array([[16.0, 16.0]])})
    policy = f["policy_truncated"]
    train_policy([np.zeros((FRAMES, 5), np.float32)], [np.zeros((FRAMES, 7), np.float32)],
                 PolicyConfig(head_options={"hidden": 8, "layers": 1}, steps=1), policy, progress=False)
    (policy / "run.json").write_text(json.dumps({"task": "lift", "image_size": SIZE, "cameras": [WRIST],
                                                 "encoder": {"name": "gt-kp"}}))
    _truncate(policy / "policy.safetensors", policy / "policy.safetensors")
    for name, change in (("other_task", {"task": "stack", "demos": "../demos.h5"}),
                         ("unknown_camera", {"cameras": ["nope"]})):
        shutil.copytree(policy, folder / f"policy_{name}")
        run = json.loads((policy / "run.json").read_text())
        (folder / f"policy_{name}" / "run.json").write_text(json.dumps({**run, **change}))
    links = {"link_demos": "demos.h5", "link_views": "views.h5", "link_don": "don", "link_policy": "policy_truncated"}
    for name, target in links.items():
        (folder / name).symlink_to(folder / target)
    shutil.copyfile(f["views.h5"], folder / "locked.h5")
    (folder / "locked_dir").mkdir()
    for name in ("locked.h5", "locked_new.h5", "locked_dir"):  # written by this process, which is running
        (folder / f".{name}.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                          "since": "now", "command": "dckp test"}))
    more = ("policy_other_task", "policy_unknown_camera", *links, "locked_dir")
    return {name.removesuffix(".h5"): str(path) for name, path in f.items()} | {
        "tmp": str(folder), "missing": str(folder / "missing.h5"), "locked": str(folder / "locked.h5"),
        "locked_new": str(folder / "locked_new.h5"),
        **{name: str(folder / name) for name in more}}


H5 = ("truncated", "text", "features")  # unreadable as a dckp dataset, whatever the command


def _each(bads, name: str, argv: list[str], names: str = "{BAD}") -> list[Case]:
    """One case per bad input; `{BAD}` in `argv` and `names` stands for it."""
    return [Case(f"{name}-{bad}", [a.replace("{BAD}", "{%s}" % bad) for a in argv],  # noqa: UP031
                 names.replace("{BAD}", "{%s}" % bad)) for bad in bads]  # noqa: UP031


CASES = [
    # numbers and names on the command line
    Case("collect-demos-negative", ["collect", "--demos", "-1", "--out", "{tmp}/new/d.h5"], "--demos"),
    Case("collect-image-size-0", ["collect", "--image-size", "0", "--out", "{tmp}/new/d.h5"], "--image-size"),
    Case("collect-unknown-task", ["collect", "--task", "nope", "--out", "{tmp}/new/d.h5"], "--task"),
    Case("collect-attempts", ["collect", "--max-attempts-factor", "0.5", "--out", "{tmp}/new/d.h5"],
         "--max-attempts-factor"),
    Case("collect-workers-0", ["collect", "--workers", "0", "--out", "{tmp}/new/d.h5"], "--workers"),
    Case("collect-not-a-number", ["collect", "--demos", "many", "--out", "{tmp}/new/d.h5"], "--demos"),
    Case("views-scenes-0", ["collect-views", "--scenes", "0", "--out", "{tmp}/new/v.h5"], "--scenes"),
    Case("views-image-size-0", ["collect-views", "--image-size", "0", "--out", "{tmp}/new/v.h5"], "--image-size"),
    Case("views-record-every-0", ["collect-views", "--record-every", "0", "--out", "{tmp}/new/v.h5"],
         "--record-every"),
    Case("views-unknown-task", ["collect-views", "--task", "nope", "--out", "{tmp}/new/v.h5"], "--task"),
    Case("pretrain-steps-negative", ["pretrain", "--views", "{views}", "--steps", "-1", "--out", "{tmp}/new/r"],
         "--steps"),
    Case("pretrain-image-size-0", ["pretrain", "--views", "{views}", "--image-size", "0", "--out", "{tmp}/new/r"],
         "--image-size"),
    Case("pretrain-threads-negative", ["pretrain", "--views", "{views}", "--threads", "-2", "--out", "{tmp}/new/r"],
         "--threads"),
    Case("eval-correspondence-pairs-0", ["eval-correspondence", "{don}", "--views", "{views}", "--pairs", "0"],
         "--pairs"),
    Case("keypoints-per-camera-0", ["keypoints", "--don", "{don}", "--demos", "{demos}", "--per-camera", "0",
                                    "--out", "{tmp}/new/r.safetensors"], "--per-camera"),
    Case("train-policy-steps-0", ["train-policy", "--demos", "{demos}", "--encoder", "gt-kp", "--references",
                                  "{tmp}/r.safetensors", "--steps", "0", "--out", "{tmp}/new/p"], "--steps"),
    Case("evaluate-episodes-0", ["evaluate", "{policy_truncated}", "--episodes", "0"], "--episodes"),
    Case("run-unknown-task", ["run", "--task", "nope", "--out", "{tmp}/new/run"], "--task"),
    # views files
    *_each((*H5, "demos", "nan_views"), "fuse", ["fuse", "{BAD}"]),
    Case("fuse-zero-depth", ["fuse", "{zero_depth_unfused}"], "{zero_depth_unfused}:data/scene_0/obs/free_depth"),
    Case("fuse-missing-key", ["fuse", "{no_free_depth}"], "{no_free_depth}:data/scene_0/obs/free_depth"),
    *_each((*H5, "demos", "unfused", "nan_views", "no_free_depth"), "pretrain",
           ["pretrain", "--views", "{BAD}", "--out", "{tmp}/new/r"]),
    Case("pretrain-zero-depth", ["pretrain", "--views", "{zero_depth}", "--out", "{tmp}/new/r"],
         "{zero_depth}:data/scene_0/obs/free_depth"),
    Case("pretrain-second-file-bad", ["pretrain", "--views", "{views}", "{unfused}", "--out", "{tmp}/new/r"],
         "{unfused}"),
    Case("pretrain-resume-truncated", ["pretrain", "--views", "{views}", "--out", "{resume_truncated}",
                                       "--image-size", "32", "--descriptor-dim", "3", "--steps", "1"],
         "{resume_truncated}/last.safetensors"),
    *_each((*H5, "demos", "zero_depth", "nan_views"), "eval-correspondence",
           ["eval-correspondence", "{don}", "--views", "{BAD}", "--out", "{tmp}/new/e.json"]),
    Case("eval-correspondence-truncated-don", ["eval-correspondence", "{don_truncated}", "--views", "{views}"],
         "{don_truncated}/don.safetensors"),
    Case("eval-keypoints-episodes-0", ["eval-keypoints", "--don", "{don}", "--references", "{refs}", "--demos",
                                       "{demos}", "--episodes", "0"], "--episodes"),
    *_each((*H5, "views", "no_actions", "nan_depth"), "eval-keypoints",
           ["eval-keypoints", "--don", "{don}", "--references", "{refs}", "--demos", "{BAD}", "--out",
            "{tmp}/new/k.json"]),
    Case("eval-keypoints-truncated-don", ["eval-keypoints", "--don", "{don_truncated}", "--references", "{refs}",
                                          "--demos", "{demos}"], "{don_truncated}/don.safetensors"),
    Case("eval-keypoints-missing-references", ["eval-keypoints", "--don", "{don}", "--references",
                                               "{tmp}/nope.safetensors", "--demos", "{demos}"],
         "{tmp}/nope.safetensors"),
    # demonstrations
    *_each((*H5, "no_actions", "wrong_shape", "nan_depth"), "keypoints",  # a views file is read too
           ["keypoints", "--don", "{don}", "--demos", "{BAD}", "--out", "{tmp}/new/r.safetensors"]),
    Case("keypoints-no-such-frame", ["keypoints", "--don", "{don}", "--demos", "{demos}", "--frame", "99",
                                     "--out", "{tmp}/new/r.safetensors"], "{demos}"),
    Case("keypoints-truncated-don", ["keypoints", "--don", "{don_truncated}", "--demos", "{demos}", "--out",
                                     "{tmp}/new/r.safetensors"], "{don_truncated}/don.safetensors"),
    *_each((*H5, "views", "no_actions", "wrong_shape", "nan_depth"), "train-policy",
           ["train-policy", "--demos", "{BAD}", "--encoder", "gt-kp", "--references", "{tmp}/r.safetensors",
            "--out", "{tmp}/new/p"]),
    Case("train-policy-missing-references", ["train-policy", "--demos", "{demos}", "--encoder", "gt-kp",
                                             "--references", "{tmp}/nope.safetensors", "--out", "{tmp}/new/p"],
         "{tmp}/nope.safetensors"),
    # any dataset
    *_each((*H5, "nan_depth"), "viz-descriptors", ["viz-descriptors", "{don}", "--file", "{BAD}", "--out",
                                                   "{tmp}/new/v"]),
    Case("viz-descriptors-no-episode", ["viz-descriptors", "{don}", "--file", "{demos}", "--episode", "demo_9",
                                        "--out", "{tmp}/new/v"], "{demos}"),
    Case("viz-descriptors-truncated-don", ["viz-descriptors", "{don_truncated}", "--file", "{demos}", "--out",
                                           "{tmp}/new/v"], "{don_truncated}/don.safetensors"),
    *_each((*H5, "no_actions", "nan_depth", "missing"), "show", ["show", "{BAD}", "--out", "{tmp}/new/s"]),
    Case("show-no-episode", ["show", "{demos}", "--episode", "demo_9", "--out", "{tmp}/new/s"], "{demos}"),
    # policy folders
    Case("evaluate-truncated-policy", ["evaluate", "{policy_truncated}", "--episodes", "1", "--workers", "1",
                                       "--out", "{tmp}/new/e"], "{policy_truncated}/policy.safetensors"),
    Case("evaluate-missing-folder", ["evaluate", "{tmp}/no_policy", "--out", "{tmp}/new/e"], "{tmp}/no_policy"),
    # run.json against what the policy was trained on
    *_each(("policy_other_task", "policy_unknown_camera"), "evaluate", ["evaluate", "{BAD}", "--out", "{tmp}/new/e"],
           "{BAD}/run.json"),
    *_each(("policy_other_task", "policy_unknown_camera"), "view", ["view", "{BAD}", "--out", "{tmp}/new/v.rrd"],
           "{BAD}/run.json"),
    # devices, seeds and sizes
    *[Case(f"{argv[0]}-no-such-cuda-device", [*argv, "--device", "cuda:99"], "--device: this machine has") for argv in (
        ["keypoints", "--don", "{don}", "--demos", "{demos}", "--out", "{tmp}/new/r.safetensors"],
        ["evaluate", "{policy_truncated}", "--out", "{tmp}/new/e"], ["pretrain", "--views", "{views}", "--out",
                                                                        "{tmp}/new/r"],
        ["pretrain-representation", "--method", "bvae", "--views", "{views}", "--out", "{tmp}/new/r"],
        ["train-policy", "--demos", "{demos}", "--encoder", "blind", "--out", "{tmp}/new/p"],
        ["run", "--out", "{tmp}/new/run"])],
    Case("view-seed-negative", ["view", "{policy_truncated}", "--seed", "-1", "--out", "{tmp}/new/v.rrd"], "--seed"),
    Case("evaluate-seed-negative", ["evaluate", "{policy_truncated}", "--seed-start", "-1", "--out", "{tmp}/new/e"],
         "--seed-start"),
    Case("collect-a-billion-demos", ["collect", "--demos", "1000000000", "--out", "{tmp}/new/d.h5"],
         "demos: 1000000000 demonstrations needs about"),
    Case("fuse-locked", ["fuse", "{locked}"], "{locked} is being written by PID"),
]

# Every command's output: below a file, of the wrong kind, there already, one of its inputs (or a link to it), a
# folder holding an input (with --force), locked by a running writer (with --force too), a bad --force.
# (name, argv with {OUT}, "file" or "folder", a command that resumes its folder, its inputs a file output could be)
WRITERS = [
    ("collect", ["collect", "--demos", "1", "--out", "{OUT}"], "file", False, ()),
    ("collect-views", ["collect-views", "--out", "{OUT}"], "file", False, ()),
    ("import", ["import", "{tmp}", "--out", "{OUT}"], "file", False, ()),
    ("pretrain", ["pretrain", "--views", "{views}", "--out", "{OUT}"], "folder", True, ()),
    ("pretrain-representation", ["pretrain-representation", "--method", "bvae", "--views", "{views}", "--out",
                                 "{OUT}"], "folder", True, ()),
    ("eval-correspondence", ["eval-correspondence", "{don}", "--views", "{views}", "--out", "{OUT}"], "file", False,
     ("views",)),
    ("viz-descriptors", ["viz-descriptors", "{don}", "--file", "{demos}", "--out", "{OUT}"], "folder", False,
     ("don",)),
    ("keypoints", ["keypoints", "--don", "{don}", "--demos", "{demos}", "--out", "{OUT}"], "file", False, ("demos",)),
    ("train-policy", ["train-policy", "--demos", "{demos}", "--encoder", "blind", "--out", "{OUT}"], "folder", True,
     ()),
    ("evaluate", ["evaluate", "{policy_truncated}", "--out", "{OUT}"], "folder", True, ("policy_truncated",)),
    ("show", ["show", "{demos}", "--out", "{OUT}"], "folder", False, ()),
    ("view", ["view", "{demos}", "--out", "{OUT}"], "file", False, ("demos",)),
    ("export-robomimic", ["export", "{demos}", "--out", "{OUT}"], "file", False, ("demos",)),
    ("export-folder", ["export", "{demos}", "--format", "folder", "--out", "{OUT}"], "folder", False, ()),
    ("export-tum", ["export", "{demos}", "--format", "tum", "--out", "{OUT}"], "folder", False, ()),
    ("pick-references", ["pick-references", "{demos}", "--out", "{OUT}"], "folder", False, ()),
    ("run", ["run", "--out", "{OUT}"], "folder", True, ()),
    ("table", ["table", "--out", "{OUT}"], "folder", True, ()),
    ("table-results", ["table", "--out", "{tmp}/new/t", "--results", "{OUT}"], "folder", True, ()),
]
LINKS = {"demos": "link_demos", "views": "link_views", "don": "link_don", "policy_truncated": "link_policy"}


def _output_cases(name: str, argv: list[str], kind: str, resumes: bool, inputs: tuple[str, ...]) -> list[Case]:
    flag = "--results" if name == "table-results" else "--out"

    def case(what: str, out: str, names: str, *extra: str) -> Case:
        return Case(f"{name}-out-{what}", [a.replace("{OUT}", out) for a in argv] + list(extra), f"{flag}: {names}")

    wrong, there = ("{tmp}", "{views}" if "views" not in inputs else "{demos}") if kind == "file" else (
        "{views}", "{don}" if "don" not in inputs else "{policy_truncated}")
    locked = "{locked_new}" if kind == "file" else "{locked_dir}"  # being written: not there yet
    cases = [case("below-a-file", "{demos}/x.h5", "{demos} is a file, not a folder"),
             case("wrong-kind", wrong, f"{wrong} is a {'folder' if kind == 'file' else 'file'}; give a {kind}"),
             case("locked", locked, f"{locked} is being written by PID"),
             case("locked-force", locked, f"{locked} is being written by PID", "--force"),
             case("bad-force", "{tmp}/new/o", "argument --force: expected true or false", "--force=maybe")]
    cases[-1] = cases[-1]._replace(names="--force")
    if not resumes:
        cases.append(case("exists", there, f"{there} exists; give --force"))
    for given in inputs:
        cases += [case("is-input", "{%s}" % given, "{%s} is the input" % given),  # noqa: UP031
                  case("is-input-link", "{%s}" % LINKS[given], "{%s} is the input" % LINKS[given])]  # noqa: UP031
    if kind == "folder" and not resumes:
        cases.append(case("holds-input", "{tmp}", "{tmp} holds the input", "--force"))
    return cases


CASES += [c for writer in WRITERS for c in _output_cases(*writer)]


def run_case(case: Case, paths: dict[str, str]) -> tuple[int | None, str]:
    """(exit status, stderr) of one case, in this process; status None and the traceback if it raised."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([a.format(**paths) for a in case.argv])
        except Exception:  # noqa: BLE001 - a traceback is what is being counted
            return None, err.getvalue() + traceback.format_exc()
    return rc, err.getvalue()


def summarise(paths: dict[str, str]) -> dict:
    """`bad_inputs` for results/robustness.json: cases tried, tracebacks and silent acceptances (exit status 0)."""
    results = [run_case(case, paths) for case in CASES]
    return {"cases": len(results), "tracebacks": sum(rc is None for rc, _ in results),
            "silent_acceptances": sum(rc == 0 for rc, _ in results),
            "failing": [c.name for c, (rc, err) in zip(CASES, results, strict=True)
                        if rc != 2 or len(err.splitlines()) != 1]}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_bad_inputs(tmp_path_factory.mktemp("bad_inputs"))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                               if c.xfail else []) for c in CASES])
def test_bad_input(case, paths):
    rc, err = run_case(case, paths)
    left = Path(paths["tmp"], "new").exists()
    shutil.rmtree(Path(paths["tmp"], "new"), ignore_errors=True)
    assert "Traceback" not in err, err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert case.names.format(**paths) in lines[0]
    assert not left  # a command that failed before writing anything leaves no --out folder


# --- the library API: bad frames given to KeypointTracker.track (numpy and torch), VisuomotorPolicy.act and the
# import readers; each raises DckpError with one line, and the good frame beside them is accepted

def _bad_frames() -> dict[str, dict[str, np.ndarray]]:
    """{name: the changed inputs} of one wrist frame (the good one is `_frames(WRIST, 1)`)."""
    good = {k.removeprefix(f"{WRIST}_"): v[0] for k, v in _frames(WRIST, 1).items()}
    depth, K, pose, rgb = good["depth"], good["K"], good["pose"], good["rgb"]

    def changed(array, index, value):
        array = array.astype(np.float64).copy()
        array[index] = value
        return array

    reflection = pose.copy()
    reflection[:3, 0] *= -1
    shear = pose.copy()
    shear[:3, :3] = shear[:3, :3] @ np.array([[1, 0.2, 0], [0, 1, 0], [0, 0, 1]])
    bad = {
        "depth-uint16-millimetres": {"depth": np.rint(depth * 1000).astype(np.uint16)},
        "depth-float-millimetres": {"depth": depth * 1000},
        "depth-negative": {"depth": -depth},
        "depth-all-nan": {"depth": np.full_like(depth, np.nan)},
        "depth-all-zero": {"depth": np.zeros_like(depth)},
        "depth-all-inf": {"depth": np.full_like(depth, np.inf)},
        "depth-int32": {"depth": depth.astype(np.int32)},
        "depth-1d": {"depth": depth[0]},
        "K-zero": {"K": np.zeros((3, 3))},
        "K-nan": {"K": changed(K, (0, 2), np.nan)},
        "K-inf": {"K": changed(K, (1, 1), np.inf)},
        "K-negative-fx": {"K": changed(K, (0, 0), -K[0, 0])},
        "K-zero-fy": {"K": changed(K, (1, 1), 0)},
        "K-last-row": {"K": changed(K, (2, 2), 2)},
        "K-3x4": {"K": np.zeros((3, 4))},
        "pose-nan": {"pose": changed(pose, (0, 3), np.nan)},
        "pose-inf": {"pose": changed(pose, (1, 1), np.inf)},
        "pose-scaled": {"pose": changed(pose, (slice(0, 3), slice(0, 3)), pose[:3, :3] * 1.5)},
        "pose-reflection": {"pose": reflection},
        "pose-shear": {"pose": shear},
        "pose-last-row": {"pose": changed(pose, (3, 0), 1)},
        "pose-3x4": {"pose": pose[:3]},
        "rgb-float": {"rgb": rgb.astype(np.float32)},
        "rgb-uint16": {"rgb": rgb.astype(np.uint16)},
        "rgb-rgba": {"rgb": np.concatenate([rgb, rgb[..., :1]], -1)},
        "rgb-grey": {"rgb": rgb[..., 0]},
    }
    return {"good": good} | {name: good | change for name, change in bad.items()}


def api_cases(paths: dict[str, str]) -> dict[str, Callable[[], object]]:
    """{name: a call of the library API with one bad input}; "good-..." calls have none and must succeed."""
    import torch
    from safetensors.torch import save

    from dckp import KeypointTracker
    from dckp.encoders import build_encoder
    from dckp.io.recordings import read_pose_matrices
    from dckp.policy import Policy, PolicyConfig, VisuomotorPolicy

    refs = Path(paths["tmp"]) / "api_refs.safetensors"
    refs.write_bytes(save({f"{WRIST}.descriptors": torch.randn(3, 3), f"{WRIST}.uv": torch.zeros(3, 2),
                           f"{WRIST}.object": torch.full((3,), -1), f"{WRIST}.local": torch.zeros(3, 3)},
                          metadata={"dckp": "{}"}))
    tracker = KeypointTracker.load(paths["don"], refs, form="world")
    policy = VisuomotorPolicy(build_encoder({"name": "blind"}, [WRIST], SIZE),
                              Policy(9, 7, PolicyConfig(head_options={"hidden": 8, "layers": 1}))).eval()
    proprio = {"joint_pos": np.zeros(7), "eef_pos": np.zeros(3), "eef_quat": np.array([1.0, 0, 0, 0]),
               "gripper_qpos": np.zeros(2)}
    cases = {}
    for name, frame in _bad_frames().items():
        inputs = [frame[k] for k in ("rgb", "depth", "K", "pose")]
        cases[f"track-numpy-{name}"] = functools.partial(tracker.track, *inputs, camera=WRIST)
        cases[f"track-torch-{name}"] = functools.partial(tracker.track, *map(torch.as_tensor, inputs), camera=WRIST)
        allowed = name.startswith("depth-all-")  # a policy acts on frames without valid depth (a camera against an
        cases[f"act-{name}" + ("-good" if allowed else "")] = functools.partial(  # object), as its demos hold them
            policy.act, {f"{WRIST}_{k}": v for k, v in frame.items()} | proprio)
    cases["act-missing-K"] = functools.partial(policy.act, {f"{WRIST}_{k}": v for k, v in _bad_frames()["good"].items()
                                                            if k != "K"} | proprio)
    folder = Path(paths["tmp"]) / "api_poses"
    folder.mkdir(exist_ok=True)
    pose_files = {"poses.npy": np.tile(np.eye(4), (3, 1, 1))[:, :3], "15.txt": "1 " * 15, "words.txt": "a b c d\n",
                  "empty.txt": "# nothing\n", "mixed.txt": "1 0 0 0\n" + "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\n",
                  "17.txt": "1 " * 17}
    for name, content in pose_files.items():
        if name.endswith(".npy"):
            np.save(folder / name, content)
        else:
            (folder / name).write_text(content)
        cases[f"read-poses-{name}"] = functools.partial(read_pose_matrices, folder / name)
    return cases


def run_api_case(call: Callable[[], object]) -> str:
    """"error" (DckpError, one line), "silent" (no error) or the traceback of any other exception."""
    try:
        call()
    except DckpError as e:
        return "error" if "\n" not in str(e) else f"a DckpError of several lines: {e}"
    except Exception:  # noqa: BLE001 - a traceback is what is being counted
        return traceback.format_exc()
    return "silent"


def summarise_api(paths: dict[str, str]) -> dict:
    """`bad_inputs_api` for results/robustness.json: bad calls tried, one-line DckpErrors, silent acceptances."""
    results = [run_api_case(call) for name, call in api_cases(paths).items() if not name.endswith("-good")]
    return {"tried": len(results), "errors": results.count("error"), "silent": results.count("silent")}


def test_the_api_refuses_bad_frames_in_one_line(paths):
    cases = api_cases(paths)
    assert len(cases) >= 80
    for name, call in cases.items():
        outcome = run_api_case(call)
        assert outcome == ("silent" if name.endswith("-good") else "error"), (name, outcome)
