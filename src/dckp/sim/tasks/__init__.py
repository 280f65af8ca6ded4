"""The task suite: five robosuite tasks standing in for the paper's RLBench tasks. One module per task."""

from __future__ import annotations

from dckp.errors import DckpError
from dckp.sim.tasks import close_door, lift, nut_assembly, pick_place_clutter, stack
from dckp.sim.tasks.base import OVERVIEW, WRIST, Task

TASKS: dict[str, Task] = {m.TASK.name: m.TASK for m in (close_door, lift, stack, pick_place_clutter, nut_assembly)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise DckpError(f"unknown task {name!r}; choose from {sorted(TASKS)}", field="task")
    return TASKS[name]


def workspace_of(ds) -> list[list[float]] | None:
    """The world box of an open `dckp.data.Dataset`: its `workspace` attribute; for files written before the
    attribute existed, its simulator task's box; else None."""
    from dckp.data.dataset import check_workspace

    if ds.workspace is not None:
        return ds.workspace
    return check_workspace(TASKS[ds.task].workspace) if ds.task in TASKS else None


__all__ = ["OVERVIEW", "TASKS", "WRIST", "Task", "get_task", "workspace_of"]
