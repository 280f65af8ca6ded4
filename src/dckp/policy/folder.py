"""A policy folder: `run.json`, which rebuilds the policy's observation, and loading the whole policy.

`run.json` is `{"task", "image_size", "cameras", "encoder": {"name", "options", "artefacts"}, "demos"}`. The
encoder's artefact paths and `demos` are stored relative to the policy folder, so a run folder can move with its
policy folders; `load_run` resolves them. The weights are `dckp.policy.train`'s files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dckp.config import save_json
from dckp.errors import DckpError

RUN = "run.json"


def _relative(path: str | os.PathLike, folder: Path) -> str:
    return os.path.relpath(Path(path).resolve(), folder.resolve())


def write_run(folder: Path, task: str, image_size: int, cameras: list[str], spec: dict, demos) -> None:
    artefacts = {k: _relative(v, folder) for k, v in spec.get("artefacts", {}).items()}
    save_json({"task": task, "image_size": image_size, "cameras": cameras,
               "encoder": {**spec, "artefacts": artefacts}, "demos": _relative(demos, folder)}, folder / RUN)


def load_run(policy_dir: str | os.PathLike) -> dict:
    """`run.json` of a policy folder, checked, with absolute paths; DckpError naming the file and field. What it is
    evaluated on is checked by `evaluated_on`."""
    from dckp.sim.tasks import TASKS

    path = Path(policy_dir) / RUN
    if not Path(policy_dir).is_dir():
        raise DckpError("policy folder not found", path=str(policy_dir))
    try:
        run = json.loads(path.read_text())
    except FileNotFoundError:
        raise DckpError("file not found", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DckpError(f"invalid JSON ({e})".replace("\n", " "), path=str(path)) from None
    if not isinstance(run, dict):
        raise DckpError("expected a JSON object", path=str(path))
    for name, kind in (("task", str), ("image_size", int), ("cameras", list), ("encoder", dict)):
        if name not in run:
            raise DckpError("missing field", path=str(path), field=name)
        if not isinstance(run[name], kind) or isinstance(run[name], bool):
            raise DckpError(f"expected {kind.__name__}, got {run[name]!r}", path=str(path), field=name)
    if run["image_size"] < 1:
        raise DckpError(f"must be >= 1, got {run['image_size']}", path=str(path), field="image_size")
    if not run["cameras"] or not all(isinstance(c, str) for c in run["cameras"]):
        raise DckpError(f"expected a non-empty list of camera names, got {run['cameras']!r}", path=str(path),
                        field="cameras")
    enc = run["encoder"]
    if not isinstance(enc.get("name"), str):
        raise DckpError("missing or non-string encoder name", path=str(path), field="encoder.name")
    if "kwargs" in enc:
        raise DckpError("written by an older dckp (encoder kwargs); train the policy again", path=str(path),
                        field="encoder.kwargs")
    for key in ("options", "artefacts"):
        if not isinstance(enc.setdefault(key, {}), dict):
            raise DckpError(f"expected an object, got {enc[key]!r}", path=str(path), field=f"encoder.{key}")
    if run["task"] not in TASKS:
        raise DckpError(f"unknown task {run['task']!r}; choose from {sorted(TASKS)}", path=str(path), field="task")
    for key, value in enc["artefacts"].items():
        enc["artefacts"][key] = str(Path(policy_dir, value).resolve())  # an absolute path stays as it is
        if not Path(enc["artefacts"][key]).exists():
            raise DckpError(f"{enc['artefacts'][key]} not found (paths are relative to the policy folder)",
                            path=str(path), field=f"encoder.artefacts.{key}")
    if isinstance(run.get("demos"), str):
        run["demos"] = str(Path(policy_dir, run["demos"]).resolve())
    return run


def evaluated_on(policy_dir: str | os.PathLike, task: str = "") -> str:
    """The task a policy folder is evaluated on: run.json's, checked against the demonstrations the policy was
    trained on (task and cameras, where that file is still there), or `task`, given on purpose; either way one whose
    cameras include run.json's. DckpError naming run.json's field otherwise."""
    from dckp.data import Dataset
    from dckp.sim.tasks import TASKS

    run, path = load_run(policy_dir), str(Path(policy_dir) / RUN)
    if task and task not in TASKS:
        raise DckpError(f"unknown task {task!r}; choose from {sorted(TASKS)}", field="task")
    name = task or run["task"]
    unknown = [c for c in run["cameras"] if c not in TASKS[name].cameras]
    if unknown:
        raise DckpError(f"{unknown} are not cameras of task {name} (it has {list(TASKS[name].cameras)})", path=path,
                        field="cameras")
    if task or not isinstance(run.get("demos"), str) or not Path(run["demos"]).is_file():
        return name
    with Dataset(run["demos"]) as ds:
        if ds.task != run["task"]:
            raise DckpError(f"names task {run['task']!r}, but the policy was trained on demonstrations of "
                            f"{ds.task!r} ({run['demos']}): set it back, or evaluate on another task on purpose "
                            "with --task", path=path, field="task")
        streams = ds.streams(ds.episodes[0]) if ds.episodes else []
    missing = [c for c in run["cameras"] if c not in streams]
    if missing:
        raise DckpError(f"cameras {missing} are not in the demonstrations the policy was trained on ({run['demos']} "
                        f"has {streams})", path=path, field="cameras")
    return name


def load_visuomotor_policy(policy_dir: str | os.PathLike, device: str = "cpu"):
    """The whole policy of a folder (`VisuomotorPolicy`: encoder, proprioception, head), in eval mode on
    `device` (its encoder's frozen networks and references too; observations are moved there); DckpError naming
    the file on bad input."""
    from dckp.encoders import build_encoder
    from dckp.policy.model import VisuomotorPolicy
    from dckp.policy.train import load_encoder_weights, load_policy

    run = load_run(policy_dir)
    head = load_policy(policy_dir)
    try:
        encoder = build_encoder(run["encoder"], run["cameras"], run["image_size"])
    except DckpError as e:
        if e.path:  # names the artefact file that is bad
            raise
        raise DckpError(e.message, path=str(Path(policy_dir) / RUN), field=f"encoder.{e.field or 'name'}") from None
    if encoder.trainable:
        load_encoder_weights(encoder, policy_dir)
    policy = VisuomotorPolicy(encoder, head).eval()
    policy.check()
    return policy.to(device)
