"""Reproducible, robust runs: bad inputs to the CLI and the library API, faults (signals, a second writer),
three fresh `make demo` runs, CLI start-up. Writes results/robustness.{json,md}.

    python benchmarks/robustness.py                  # about 25 minutes on 2 cores (three demo runs)
    python benchmarks/robustness.py --demo-runs 0    # about 3 minutes: keeps the last demo runs' measures

- `bad_inputs`: every case of tests/test_bad_inputs.py (each bad input fed to every command that reads it, and
  every command's output below a file, of the wrong kind, already there, one of its inputs, locked):
  cases tried, tracebacks and silent acceptances (exit status 0), and the names of failing cases.
- `bad_inputs_api`: every bad call of tests/test_bad_inputs.py's `api_cases` (bad frames given to
  `KeypointTracker.track`, numpy and torch, to `VisuomotorPolicy.act`, bad pose files to the import reader): calls
  tried, one-line `DckpError`s, silent acceptances (the rest are tracebacks).
- `faults`: `dckp collect` (2 demonstrations, 64 px) sent SIGTERM, or SIGKILL, after its first demonstration and
  run again: whether each rerun resumes to the same bytes as a collection run straight through
  (`sigterm_resumes`, `sigkill_resumes`); whether a second `dckp collect` into a file being written is refused
  with a line naming the first one's PID (`concurrent_writer_refused`); and the `.tmp` files left in the folder
  after all of it (`tmp_left`).
- `reproducible`: three `dckp run --preset demo` runs from scratch, each written to the same folder and moved
  aside, have bit-identical artefacts (the list of tests/test_determinism.py) and evaluation records (timings
  aside, docs/determinism.md).
- `demo_success`: the successes of those three runs (of the demo's episodes).
- `cli_start_s`: the median wall time of `dckp --help` over 5 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_bad_inputs import make_bad_inputs, summarise, summarise_api  # noqa: E402
from test_determinism import ARTEFACTS, digest, outcome  # noqa: E402

from dckp.config import atomic_write_bytes, save_json  # noqa: E402
from dckp.lock import lock_path  # noqa: E402
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


def _dckp(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dckp.cli.main", *map(str, argv)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)


def faults(folder: Path) -> dict:
    """`faults` (module docstring), in `folder`."""
    argv = ["collect", "--demos", "2", "--image-size", "64"]
    straight = folder / "straight.h5"
    _dckp(*argv, "--out", straight).communicate()
    resumes = {}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = folder / f"{sig.name}.h5"
        killed = _dckp(*argv, "--out", out)
        _wait_for(folder / f".{out.name}.episodes" / "000000.npz", killed)
        killed.send_signal(sig)
        killed.communicate()
        rerun = _dckp(*argv, "--out", out)
        rerun.communicate()
        resumes[sig] = (killed.returncode == (143 if sig == signal.SIGTERM else -sig) and rerun.returncode == 0
                        and out.read_bytes() == straight.read_bytes())
    out = folder / "two_writers.h5"
    first = _dckp(*argv, "--out", out)
    _wait_for(lock_path(out), first)
    _, err = (second := _dckp(*argv, "--out", out)).communicate()
    refused = second.returncode == 2 and f"is being written by PID {first.pid}" in err
    first.send_signal(signal.SIGTERM)
    first.communicate()
    return {"sigterm_resumes": resumes[signal.SIGTERM], "sigkill_resumes": resumes[signal.SIGKILL],
            "concurrent_writer_refused": refused, "tmp_left": sum(".tmp" in p.name for p in folder.rglob("*"))}


def cli_start() -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dckp.cli.main", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-runs", type=int, default=RUNS, choices=[0, RUNS],
                        help=f"fresh demo runs: {RUNS}, or 0 to keep the last ones' measures from "
                        "results/robustness.{json,md} (default: %(default)s)")
    args = parser.parse_args()
    results = {"cli_start_s": cli_start()}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_bad_inputs(Path(tmp))
        bad = summarise(paths)
        results["bad_inputs_api"] = summarise_api(paths)
    results["bad_inputs"] = {k: bad[k] for k in ("cases", "tracebacks", "silent_acceptances")}
    with tempfile.TemporaryDirectory() as tmp:
        results["faults"] = faults(Path(tmp))
    episodes = RUN_PRESETS["demo"].episodes
    if args.demo_runs:
        folder = ROOT / "runs" / "robustness"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        reproducible, successes, seconds, mismatches = demo_runs(folder)
        results.update(reproducible=reproducible, demo_success=successes)
        demo_lines = [f"| three fresh demo runs bit-identical | {' '.join([str(reproducible), *mismatches])} |",
                      f"| demo successes | {' / '.join(f'{s} of {episodes}' for s in successes)} |",
                      f"| demo wall time | {' / '.join(f'{s / 60:.1f} min' for s in seconds)} (each from scratch) |"]
    else:  # the last demo runs' rows, marked as such
        last = json.loads((ROOT / "results" / "robustness.json").read_text())
        results.update(reproducible=last["reproducible"], demo_success=last["demo_success"])
        note = " (earlier run, not repeated: `--demo-runs 0`)"
        demo_lines = [line if note in line else line.replace(" |", note + " |", 1) for line in
                      (ROOT / "results" / "robustness.md").read_text().splitlines()
                      if line.startswith(("| demo", "| three fresh"))]
    save_json(results, ROOT / "results" / "robustness.json")

    api, fault = results["bad_inputs_api"], results["faults"]
    lines = ["# Reproducible, robust runs", "", "`python benchmarks/robustness.py` on this 2-core machine.", "",
             "| measure | value |", "|---|---|",
             f"| bad inputs tried | {bad['cases']} (every case of tests/test_bad_inputs.py) |",
             f"| tracebacks | {bad['tracebacks']} |", f"| silent acceptances | {bad['silent_acceptances']} |",
             f"| failing cases | {', '.join(bad['failing']) or 'none'} |",
             f"| bad API calls tried | {api['tried']} (tracker, policy act, pose reader) |",
             f"| one-line DckpErrors / silent / tracebacks | {api['errors']} / {api['silent']} / "
             f"{api['tried'] - api['errors'] - api['silent']} |",
             f"| SIGTERM / SIGKILL of `dckp collect`, rerun to the same bytes | {fault['sigterm_resumes']} / "
             f"{fault['sigkill_resumes']} |",
             f"| second writer refused | {fault['concurrent_writer_refused']} |",
             f"| `.tmp` files left after the faults | {fault['tmp_left']} |",
             *demo_lines,
             f"| `dckp --help` | {results['cli_start_s']:.2f} s (median of 5) |"]
    atomic_write_bytes(ROOT / "results" / "robustness.md", ("\n".join(lines) + "\n").encode())
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
