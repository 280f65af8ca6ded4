"""What a table's cells cost to train: the time each finished cell's training took, and an estimate for each cell
still to run.

An estimate is the cell's training steps times the seconds per step of the finished trainings most like it, from
the run folder's own records (`stage_seconds.json` and each policy's `policy.json`): of the same task, head and
kind of encoder first (frozen, whose features are computed once, from images or without them as gt-kp's and
blind's, whose validation rollouts render nothing; or trained end to end with the policy), else of the same head
and kind on any task, the median of their seconds per step. A training's seconds include the encoder's pass over
the demonstrations and the validation rollouts run beside it, on the machine that ran it. A training stopped over
its time budget (`RunConfig.max_train_hours`, the table's `--max-cell-hours`) counts with the seconds per step
it measured before it stopped (its `estimate.json`: the steps alone). None where no such training has finished or
measured itself yet.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from dckp.pipeline import RunConfig, policy_settings
from dckp.policy.train import ESTIMATE

Key = tuple[str, str, str]  # (task, head, encoder kind)


def kind(method: str) -> str:
    from dckp.encoders.base import encoder_class

    cls = encoder_class(method)
    if cls.trainable:
        return "end-to-end"
    return "frozen, from images" if cls.needs_images() else "frozen, without images"


def measured(out: Path, tasks: list[str], methods: list[str], runs: list[RunConfig]) -> dict[Key, list[float]]:
    """Seconds per training step of every finished policy in the task folders `out/<task>` (of each method, under
    each of `runs`' protocols), and of each training stopped over its budget, by (task, head, encoder kind);
    finished trainings with no recorded time are left out."""
    rates: dict[Key, list[float]] = {}
    for task in tasks:
        path = out / task / "stage_seconds.json"
        seconds = json.loads(path.read_text()) if path.exists() else {}
        for run in runs:
            for method in methods:
                folder = out / task / run.policy_folder(method)
                meta_path, spent = folder / "policy.json", seconds.get(run.stage("policy", method))
                if not meta_path.exists():  # not finished: stopped over its budget, or not trained
                    if (folder / ESTIMATE).exists():
                        measuring = json.loads((folder / ESTIMATE).read_text())
                        rates.setdefault((task, measuring["head"], kind(method)), []).append(measuring["s_per_step"])
                    continue
                if spent is None:
                    continue
                meta = json.loads(meta_path.read_text())
                steps = meta.get("config", {}).get("steps")
                head = meta.get("head", {}).get("name", "lstm")  # policies before heads: the paper's lstm
                if steps:
                    rates.setdefault((task, head, kind(method)), []).append(spent / steps)
    return rates


def estimate_s(rates: dict[Key, list[float]], run: RunConfig, task: str, method: str, sp: str) -> float | None:
    """Seconds that training `method`'s policy on `task` under `run` (stage preset `sp`) is expected to take."""
    policy = policy_settings(dataclasses.replace(run, task=task), sp)
    k = kind(method)
    same_task = rates.get((task, policy.head, k))
    any_task = [r for (_, head, kk), rs in rates.items() if head == policy.head and kk == k for r in rs]
    basis = same_task or any_task
    return round(policy.steps * statistics.median(basis), 1) if basis else None


def hours(seconds: float | None) -> str:
    return "unknown (no training of its head and encoder kind has finished)" if seconds is None else \
        f"{seconds / 3600:.1f} h"
