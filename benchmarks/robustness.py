"""Reproducible, robust runs: bad inputs, three fresh `make demo` runs, CLI start-up. Writes
results/robustness.{json,md}.

    python benchmarks/robustness.py          # about 25 minutes on 2 cores (three demo runs)

- `bad_inputs`: every case of tests/test_bad_inputs.py (each bad input fed to every command that reads it):
  cases tried, tracebacks and silent acceptances (exit status 0), and the names of failing cases.
- `reproducible`: three `dckp run --preset demo` runs from scratch, each written to the same folder and moved
  aside, have bit-identical artefacts (the list of tests/test_determinism.py) and evaluation records (timings
  aside, docs/determinism.md).
- `demo_success`: the successes of those three runs (of the demo's episodes).
- `cli_start_s`: the median wall time of `dckp --help` over 5 runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_bad_inputs import make_bad_inputs, summarise  # noqa: E402
from test_determinism import ARTEFACTS, digest, outcome  # noqa: E402

from dckp.config import atomic_write_bytes, save_json  # noqa: E402
from dckp.pipeline import RUN_PRESETS  # noqa: E402

RUNS = 3


def demo_runs(folder: Path) -> tuple[bool, list[int], list[float], list[str]]:
    """Three fresh demo runs; whether they match bit for bit, their successes, wall times and mismatches."""
    out, kept, seconds = folder / "demo", [], []
    for i in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dckp.cli.main", "run", "--preset", "demo", "--out", str(out)],
                       check=True)
        seconds.append(time.perf_counter() - start)
        kept.append(folder / f"demo_{i}")
        shutil.move(out, kept[-1])
    encoder = RUN_PRESETS["demo"].encoder
    successes = [json.loads((k / f"policy_{encoder}" / "eval" / "eval.json").read_text())["successes"] for k in kept]
    mismatches = [f"{k.name}/{name}" for k in kept[1:] for name in ARTEFACTS
                  if digest(k / name) != digest(kept[0] / name)]
    mismatches += [f"{k.name}/policy_{e}/eval/eval.json" for k in kept[1:] for e in ("dckp-3d", "gt-kp")
                   if outcome(k / f"policy_{e}" / "eval" / "eval.json")
                   != outcome(kept[0] / f"policy_{e}" / "eval" / "eval.json")]
    return not mismatches, successes, seconds, mismatches


def cli_start() -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dckp.cli.main", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    results = {"cli_start_s": cli_start()}
    with tempfile.TemporaryDirectory() as tmp:
        bad = summarise(make_bad_inputs(Path(tmp)))
    results["bad_inputs"] = {k: bad[k] for k in ("cases", "tracebacks", "silent_acceptances")}
    folder = ROOT / "runs" / "robustness"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    reproducible, successes, seconds, mismatches = demo_runs(folder)
    results.update(reproducible=reproducible, demo_success=successes)
    save_json(results, ROOT / "results" / "robustness.json")

    episodes = RUN_PRESETS["demo"].episodes
    lines = ["# Reproducible, robust runs", "", "`python benchmarks/robustness.py` on this 2-core machine.", "",
             "| measure | value |", "|---|---|",
             f"| bad inputs tried | {bad['cases']} (every case of tests/test_bad_inputs.py) |",
             f"| tracebacks | {bad['tracebacks']} |", f"| silent acceptances | {bad['silent_acceptances']} |",
             f"| failing cases | {', '.join(bad['failing']) or 'none'} |",
             f"| three fresh demo runs bit-identical | {' '.join([str(reproducible), *mismatches])} |",
             f"| demo successes | {' / '.join(f'{s} of {episodes}' for s in successes)} |",
             f"| demo wall time | {' / '.join(f'{s / 60:.1f} min' for s in seconds)} (each from scratch) |",
             f"| `dckp --help` | {results['cli_start_s']:.2f} s (median of 5) |"]
    atomic_write_bytes(ROOT / "results" / "robustness.md", ("\n".join(lines) + "\n").encode())
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
