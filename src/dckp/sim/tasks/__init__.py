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


__all__ = ["OVERVIEW", "TASKS", "WRIST", "Task", "get_task"]
