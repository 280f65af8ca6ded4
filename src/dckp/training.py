"""What the resumable training loops share (DON, representations, policy): stopping after the current step on a
first Ctrl-C, reading the losses of several steps from the device at once, reading back a log whose last line an
interrupt may have cut short, reading a checkpoint, and how many bytes of decoded frames a training process may
keep in memory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path

import torch

from dckp.errors import DckpError


@contextlib.contextmanager
def stop_after_step():
    """Yields a list that a first Ctrl-C appends to (so the loop can finish its step and save); the second Ctrl-C
    raises KeyboardInterrupt as usual. Outside the main thread, signals stay as they are."""
    stop: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def first(signum, frame):
        stop.append(True)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


READ_EVERY = 25  # steps between reads of the losses from the device (each read waits for the device)


def read_pending(pending: list[tuple[dict, dict[str, torch.Tensor]]]) -> list[dict]:
    """The log records of steps not read yet, each `(fields, losses)` with `losses` 0-d tensors: the fields and
    the losses as floats, read back from the device at once, so a GPU loop waits once per `READ_EVERY` steps
    instead of at every step. Empties `pending`."""
    if not pending:
        return []
    names = list(pending[0][1])
    values = torch.stack([torch.stack([losses[k].detach().double() for k in names]) for _, losses in pending])
    records = [{**fields, **dict(zip(names, row, strict=True))}
               for (fields, _), row in zip(pending, values.tolist(), strict=True)]
    pending.clear()
    return records


def log_lines_before(path: Path, step: int) -> list[str]:
    """The complete JSON lines of a training log (one object with a `step` per line) of steps before `step`; a
    line cut short by an interrupted run is left out."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["step"] < step:
            lines.append(line)
    return lines


def read_checkpoint(path: str | Path, what: str, remedy: str, missing: str = "file not found") -> tuple[dict, dict]:
    """(the JSON of the metadata entry `dckp`, the tensors) of a safetensors checkpoint; DckpError naming the file
    when it is missing (`missing`) or unreadable (as "not a readable `what` (...); `remedy`")."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DckpError(missing, path=str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["dckp"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0]
        raise DckpError(f"not a readable {what} ({type(e).__name__}: {reason}); {remedy}", path=str(path)) from None
    return meta, tensors


def prefixed(tensors: dict, prefix: str) -> dict:
    """The entries of `tensors` whose names start with `prefix`, without it."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_tensors(optimizer) -> tuple[dict, dict]:
    """An optimiser's state for a safetensors checkpoint: its tensors as `optimizer/<param index>/<name>`, and
    for the JSON metadata its param_groups and its non-tensor entries (`scalars`)."""
    import torch

    state = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for i, entries in state["state"].items():
        for k, v in entries.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer/{i}/{k}"] = v
            else:
                meta["scalars"].setdefault(str(i), {})[k] = v
    return tensors, meta


def load_optimizer_tensors(optimizer, tensors: dict, meta: dict) -> None:
    """Restore an optimiser from what `optimizer_tensors` gave (the metadata read back from JSON)."""
    state: dict[int, dict] = {}
    for key, v in prefixed(tensors, "optimizer/").items():
        i, name = key.split("/", 1)
        state.setdefault(int(i), {})[name] = v
    for i, entries in meta["scalars"].items():
        state.setdefault(int(i), {}).update(entries)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]  # JSON turned tuples (Adam's betas) into lists
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def memory_share() -> int:
    """Bytes of decoded frames a training process (or one of its DataLoader workers) may keep: half this machine's
    memory, in proportion to the cores its torch threads use (all of the half for a 2-thread training on a 2-core
    machine; an eighth of it for each of 8 trainings of 2 threads side by side on a 16-core Ray node; a 1-thread
    loader worker on 16 cores, a sixteenth)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(memory / 2 * min(1.0, torch.get_num_threads() / (os.cpu_count() or 1)))
