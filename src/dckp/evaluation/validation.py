"""Validation rollouts of kept policy checkpoints (`dckp.policy.kept`), in background processes while training
goes on.

Each kept checkpoint is rolled out from the validation seeds `VAL_SEED_START ..` (never the evaluation seeds,
`EVAL_SEED_START ..`) by `evaluate_policy` in a worker process, and its result recorded in `validation.jsonl`. A
resumed training re-submits the kept checkpoints that have no line yet, and an evaluation stopped part-way keeps
the episodes it finished.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
from collections.abc import Callable
from pathlib import Path

from dckp.policy.kept import KEPT, RECORDS, kept_folder, read_records

VAL_SEED_START = 2_000_000


def validate_folder(folder: str, episodes: int, seed_start: int = VAL_SEED_START, workers: int = 1) -> dict:
    """Roll out the policy folder from `episodes` validation seeds (`seed_start` on: VAL_SEED_START or above), in
    this process (the simulator is imported here, in the worker, not in the training process) or `workers`."""
    from dckp.evaluation.rollout import evaluate_policy

    if seed_start < VAL_SEED_START:
        raise ValueError(f"validation seeds start at {VAL_SEED_START}, got {seed_start}")
    r = evaluate_policy(folder, episodes, seed_start=seed_start, workers=workers, videos=0,
                        out_dir=Path(folder) / "validation", progress=False)
    return {"successes": round(r["success_rate"] * r["episodes"]), "episodes": r["episodes"],
            "rate": r["success_rate"]}


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the training process decides what an interrupt stops


class Validator:
    """Submits kept checkpoints to `workers` spawned processes (`run` is `validate_folder` or a stand-in with its
    signature) and records their results as they finish. `prepare(folder)` completes a kept folder first (its
    `run.json`). `close()` waits for the rollouts, with more processes once the training has ended; `terminate()`
    (an interrupted training) stops them, and the next `Validator` on the folder submits them again."""

    def __init__(self, out: Path, episodes: int, workers: int, prepare: Callable[[Path], None],
                 run: Callable[..., dict] = validate_folder):
        self.out, self.episodes, self.prepare, self.run, self.workers = Path(out), episodes, prepare, run, workers
        self.records = read_records(self.out)
        self.pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_interrupts)
        self.pending: dict[int, multiprocessing.pool.AsyncResult] = {}
        for folder in sorted((self.out / KEPT).glob("step_*")):
            step = int(folder.name[len("step_"):])
            if step not in self.records and (folder / "policy.json").exists():
                self.submit(step, folder)

    def submit(self, step: int, folder: Path) -> None:
        self.prepare(folder)
        self.pending[step] = self.pool.apply_async(self.run, (str(folder), self.episodes))

    def poll(self, wait: bool = False) -> list[dict]:
        """Record the results finished by now (all of them with `wait`); the new records."""
        new = []
        for step, future in sorted(self.pending.items()):
            if wait or future.ready():
                new.append({"step": step, **future.get()})
                del self.pending[step]
        self._record(new)
        return new

    def _record(self, new: list[dict]) -> None:
        with open(self.out / RECORDS, "a") as f:
            for record in new:
                f.write(json.dumps(record) + "\n")
                self.records[record["step"]] = record

    def close(self, workers: int = 0) -> dict[int, dict]:
        """Wait for every submitted rollout; every record, by step. With more `workers` than the pool's (the CPUs
        of a training that has ended), the checkpoints still rolling out are stopped and rolled out again, one after
        the other, by that many processes from the episodes they finished (each episode is seeded and acts on one
        torch thread, so the records are the same)."""
        try:
            self.poll()
            if workers > self.workers and self.pending:
                self.terminate()
                for step in sorted(self.pending):
                    self._record([{"step": step, **self.run(str(kept_folder(self.out, step)), self.episodes,
                                                              workers=workers)}])
                self.pending.clear()
            self.poll(wait=True)
        finally:
            self.terminate()
        return dict(sorted(self.records.items()))

    def terminate(self) -> None:
        self.pool.terminate()
        self.pool.join()
