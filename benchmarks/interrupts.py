"""`dckp run` interrupted with a signal in each stage in turn, then run again: whether the run finishes with the same
bytes as one run straight through. Writes results/interrupts_PRESET.{json,md}.

    python benchmarks/interrupts.py                       # tiny sizes (tests/test_determinism.py's): ~5 min
    python benchmarks/interrupts.py --preset demo         # `make demo`'s settings: hours on 2 cores

One run folder goes straight through; another is started, sent the signal (SIGTERM by default) in each stage (its
`STAGE: running` log line, then `--at` times the seconds the stage took in the straight run: 0 as it starts, 0.5
half-way through its work, which the rerun then resumes), started again, and so on through every stage, then run to
the end. Compared: the artefacts of tests/test_determinism.py and each evaluation's record (timings and pieces
aside). Each interrupted run must exit with 128 + the signal's number and print its resume line, which names the
stage it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_determinism import ARTEFACTS, FLAGS, digest, outcome  # noqa: E402

from dckp.config import atomic_write_bytes, save_json  # noqa: E402


def _run(out: Path, flags: list[str], stop_at: str | None, sig: int, after_s: float = 0.0
         ) -> tuple[int, str, list[str], list[str]]:
    """`dckp run` into `out`; with `stop_at`, `sig` is sent `after_s` seconds after that stage starts, unless the run
    has ended by then. (exit status, the stage it was sent in or "", the last line of stderr, the stages that ran)."""
    p = subprocess.Popen([sys.executable, "-m", "dckp.cli.main", "run", "--out", str(out), *flags],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    sent, lines, ran = [], [], []

    def send() -> None:
        if p.poll() is None:
            p.send_signal(sig)
            sent.append(stop_at)

    for line in p.stderr:
        lines.append(line.rstrip("\n"))
        started = re.match(r"INFO (.+): running$", line.strip())
        if started:
            ran.append(started.group(1))
        if started and stop_at is not None and started.group(1) == stop_at:
            threading.Timer(after_s, send).start()
    return p.wait(), "".join(sent), [x for x in lines if x.strip()][-1:], ran


def _record(path: Path) -> dict:
    """An evaluation's record without its timings, nor `chunks`: the pieces an evaluation resumed across."""
    return {k: v for k, v in outcome(path).items() if k != "chunks"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "demo"],
                        help="tiny: tests/test_determinism.py's flags; demo: `make demo`'s (default: %(default)s)")
    parser.add_argument("--signal", default="SIGTERM", choices=["SIGTERM", "SIGINT", "SIGHUP"],
                        help="the signal sent (default: %(default)s)")
    parser.add_argument("--at", type=float, default=0.0,
                        help="when in each stage the signal comes, as a fraction of the stage's seconds in the "
                        "straight run (default: %(default)s, as it starts)")
    parser.add_argument("--folder", default=str(ROOT / "runs" / "interrupts"),
                        help="where the runs go: FOLDER/run, the straight one then moved to FOLDER/straight "
                        "(default: runs/interrupts)")
    args = parser.parse_args()
    flags = ["--preset", "demo"] if args.preset == "demo" else FLAGS
    sig = signal.Signals[args.signal]
    folder = Path(args.folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    stopped, straight = folder / "run", folder / "straight"  # both made at one path, so stored paths agree

    start = time.perf_counter()
    rc, _, _, stages = _run(stopped, flags, None, sig)
    straight_s = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"the straight run failed (exit status {rc})")
    shutil.move(stopped, straight)
    seconds = json.loads((straight / "stage_seconds.json").read_text())

    log, start = [], time.perf_counter()
    for stage in stages:
        after_s = args.at * (seconds.get(stage) or 0.0)
        rc, sent, last, _ = _run(stopped, flags, stage, sig, after_s)
        stopped_in = re.search(r"stage '(.+?)' stopped", last[0]) if last else None
        log.append({"stage": stage, "after_s": round(after_s, 1), "signal_sent": bool(sent), "exit_status": rc,
                    "stopped_in": stopped_in.group(1) if stopped_in else "",
                    "resume_line": bool(last) and last[0].startswith("interrupted: ") and "resume with: dckp run"
                    in last[0], "last_line": last[0] if last else ""})
        print(json.dumps(log[-1]), flush=True)
    rc, _, _, _ = _run(stopped, flags, None, sig)
    interrupted_s = time.perf_counter() - start
    mismatches = [name for name in ARTEFACTS if (straight / name).exists() != (stopped / name).exists()
                  or (straight / name).exists() and digest(straight / name) != digest(stopped / name)]
    mismatches += [str(p.relative_to(straight)) for p in sorted(straight.glob("policy_*/eval/eval.json"))
                   if _record(p) != _record(stopped / p.relative_to(straight))]
    results = {"preset": args.preset, "signal": args.signal, "at": args.at, "stages": len(stages),
               "interrupted_in_each": all(e["signal_sent"] and e["exit_status"] == 128 + sig and e["resume_line"]
                                          and e["stopped_in"] == e["stage"] for e in log),
               "final_exit_status": rc, "same_bytes": rc == 0 and not mismatches, "mismatches": mismatches,
               "straight_s": round(straight_s, 1), "interrupted_s": round(interrupted_s, 1), "log": log}
    save_json(results, ROOT / "results" / f"interrupts_{args.preset}.json")
    when = "as it starts" if not args.at else f"{args.at:g} of the way through its straight-run seconds"
    lines = ["# A run interrupted in each stage", "", f"`python benchmarks/interrupts.py --preset {args.preset} "
             f"--signal {args.signal} --at {args.at:g}` on this 2-core machine: `dckp run` sent {args.signal} in "
             f"each of its {len(stages)} stages in turn ({when}), each time started again, then run to the end.", "",
             f"- every interrupted run exited {128 + sig} with its resume line, stopped in that stage: "
             f"{results['interrupted_in_each']}",
             f"- the final run's artefacts and evaluation records equal a run straight through: "
             f"{results['same_bytes']} {' '.join(mismatches)}",
             f"- wall time: straight {straight_s / 60:.1f} min; interrupted {len(stages)} times and finished "
             f"{interrupted_s / 60:.1f} min", "", "| stage | signal after s | exit status | resume line |",
             "|---|---|---|---|", *(f"| {e['stage']} | {e['after_s']} | {e['exit_status']} | {e['last_line']} |"
                                    for e in log)]
    atomic_write_bytes(ROOT / "results" / f"interrupts_{args.preset}.md", ("\n".join(lines) + "\n").encode())
    print(json.dumps({k: v for k, v in results.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
