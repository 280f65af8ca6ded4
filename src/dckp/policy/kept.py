"""Kept policy checkpoints and their validation records.

A kept checkpoint is a policy folder `checkpoints/step_<steps>/` (weights, `policy.json` and `run.json`). Its
validation result (`dckp.evaluation.validation`: rollouts from seeds 2,000,000 on) is one line of
`validation.jsonl` in the policy folder: `{"step", "successes", "episodes", "rate"}`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

KEPT, RECORDS = "checkpoints", "validation.jsonl"


def kept_folder(out: Path, step: int) -> Path:
    return Path(out) / KEPT / f"step_{step:07d}"


def forget_kept(out: Path) -> None:
    """Remove the kept checkpoints and validation records in `out`: those of an earlier training, before one that
    starts afresh there (a pipeline starts a policy over when its encoder's inputs changed), which would otherwise
    be taken for its own (its checkpoints at the same steps were never rolled out, and the best picked among old
    records)."""
    shutil.rmtree(Path(out) / KEPT, ignore_errors=True)
    (Path(out) / RECORDS).unlink(missing_ok=True)


def read_records(out: Path) -> dict[int, dict]:
    """The validation results recorded in `out`, by step (a line cut short by a kill is left out)."""
    path, records = Path(out) / RECORDS, {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[int(record["step"])] = record
    return records


def best_step(records: dict[int, dict]) -> int:
    """The kept step with the highest validation success; of equal ones the latest (the longest trained)."""
    return max(records, key=lambda s: (records[s]["rate"], s))
