"""Where a training step's time goes (issue #43): results/train_step_profile.{json,md} and results/gpu.json
`profile.<cpu|gpu>`; with `--before-src`, the steps/s of an earlier commit's code beside this one's, in one run.

    PYTHONPATH=src python benchmarks/train_step_profile.py --views V.h5 --demos D.h5 --before-src OLD/src

Two trainings, each through its real loop (`dckp.don.train.pretrain`, `dckp.learn.train_on_demos`) on `--device`:
- `don`: the `cpu` DON preset (ResNet-18 without layer4, 4 pairs of 128 px images, 500 matches) on the fused views;
- `cnn` and `cnnd`: the `cpu` policy preset with the paper's end-to-end CNN (16 whole demonstrations per step) on
  the demonstrations.

**Phases.** The loops label each step's phases for torch.profiler (`record_function`: data, h2d, forward, loss,
backward, optim). Here those labels are timed instead, waiting for the device at each boundary so that each phase
holds its own work: the mean ms per step over the steps after `--warmup` (the last step left out: it ends the
run), and `other_ms`, the rest of a step (seeding, logging, the progress bar) in the same run.

**Syncs per step.** Calls that make the host wait for the device: reading a tensor back (`item`, `tolist`,
`__bool__`, `__float__`, `__int__`, `cpu`, `numpy`) or an output whose shape depends on the data (`nonzero`,
`masked_select`, `unique`, indexing with a boolean mask), counted by a `TorchFunctionMode` over the training
process (the DON's pairs drawn by one loader process, as on a GPU; torch.optim's reads of its CPU step counts left
out); the same calls on the CPU, where they cost nothing.

**Steps/s** of an unprofiled run: (T(warmup + steps) - T(warmup)) / steps for two fresh runs of the same seed, after
a first, untimed run of `--warmup` steps in the same process (which takes the process's one-off costs), so start-up,
the first decoding of the demonstrations and (with `--compile`) compilation cancel out. With
`--before-src`, each measurement of the older code runs in a subprocess beside the same one of this code, in
turns (the order flipped each time), the median of `--repeats` (all are kept). Take it on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("data", "h2d", "forward", "loss", "backward", "optim")
SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "nonzero", "masked_select", "unique"}
KINDS = ("don", "cnn", "cnnd")


def _train(kind: str, steps: int, folder: str, args) -> None:
    """`steps` steps of training `kind` from scratch into `folder` (the code found on sys.path)."""
    import torch

    torch.set_num_threads(args.threads)
    if kind == "don":
        from dckp.don.config import DON_PRESETS
        from dckp.don.train import pretrain

        cfg = dataclasses.replace(DON_PRESETS["cpu"], steps=steps, device=args.device, workers=args.workers)
        if args.compile:
            cfg = dataclasses.replace(cfg, compile=args.compile)
        pretrain([args.views], cfg, folder, checkpoint_every=10**9, progress=False)
    else:
        from dckp.learn import train_on_demos
        from dckp.policy.config import POLICY_PRESETS

        cfg = dataclasses.replace(POLICY_PRESETS["cpu"], steps=steps, checkpoint_every=10**9, device=args.device)
        if args.compile:
            cfg = dataclasses.replace(cfg, compile=args.compile)
        train_on_demos(args.demos, {"name": kind}, cfg, folder, progress=False)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _seconds(kind: str, steps: int, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _train(kind, steps, tmp, args)
        _sync(args.device)
        return time.perf_counter() - start


def _syncs(kind: str, steps: int, args) -> int:
    """The calls that wait for the device in `steps` steps of training, outside torch.optim (whose `item` calls
    read step counts that live on the CPU). The DON's pairs are drawn by a loader process, as on a GPU."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, a=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if (name in SYNCS or (name in ("__getitem__", "__setitem__") and _boolean_index(a))) and \
                    "/torch/optim/" not in sys._getframe(1).f_code.co_filename:
                Count.n += 1
            return func(*a, **(kwargs or {}))

    with tempfile.TemporaryDirectory() as tmp, Count():
        _train(kind, steps, tmp, argparse.Namespace(**{**vars(args), "workers": max(args.workers, 1)}))
    return Count.n


def _boolean_index(a) -> bool:
    import torch

    index = a[1] if len(a) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def speed(kind: str, args) -> dict:
    """Steps/s of the code on sys.path (one worker process runs this)."""
    w, n = args.warmup, args.steps
    _seconds(kind, w, args)  # the process's one-off costs (thread pools, allocator, kernels' first use) go here
    return {"steps_per_s": round(n / (_seconds(kind, w + n, args) - _seconds(kind, w, args)), 3)}


def syncs(kind: str, args) -> dict:
    """Syncs per step of the code on sys.path (one worker process runs this)."""
    w, n = args.warmup, args.steps
    return {"syncs_per_step": round((_syncs(kind, w + n, args) - _syncs(kind, w, args)) / n, 2)}


def phases(kind: str, args) -> dict:
    """Mean ms per step of each labelled phase of this code, over the steps after the warm-up."""
    import dckp.don.loss
    import dckp.don.train
    import dckp.policy.train

    times: dict[str, list[float]] = {p: [] for p in PHASES}
    starts: list[float] = []  # of each step (its data phase)

    @contextlib.contextmanager
    def timed(label):
        _sync(args.device)
        start = time.perf_counter()
        if label == "data":
            starts.append(start)
        yield
        _sync(args.device)
        times[label].append(time.perf_counter() - start)

    for module in (dckp.don.loss, dckp.don.train, dckp.policy.train):
        module.record_function = timed
    with tempfile.TemporaryDirectory() as tmp:
        _train(kind, args.warmup + args.steps, tmp, args)
    w = args.warmup
    out = {f"{p}_ms": round(1000 * statistics.fmean(t[w:-1]), 2) if t[w:-1] else 0.0 for p, t in times.items()}
    step = 1000 * statistics.fmean(b - a for a, b in zip(starts[w:-1], starts[w + 1:], strict=True))
    return {**out, "other_ms": round(step - sum(out.values()), 2)}


def _worker(src: str, what: str, kind: str, compile: str = "") -> dict:
    """`what` (speed, syncs or phases) of `kind` by the dckp in `src`, compiled with backend `compile` ('': not), in
    a fresh process."""
    argv = [sys.executable, __file__, *sys.argv[1:], "--worker", what, kind, "--compile", compile]
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{what} {kind} with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", required=True, help="a fused views file (dckp collect-views, dckp fuse)")
    parser.add_argument("--demos", required=True, help="a demonstrations file (dckp collect)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="trainings to measure")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=0, help="the DON's DataLoader processes")
    parser.add_argument("--compile", default="", help="also measure this code with this torch.compile backend")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the measured ones")
    parser.add_argument("--steps", type=int, default=20, help="measured steps")
    parser.add_argument("--repeats", type=int, default=3, help="steps/s: the median of this many measurements")
    parser.add_argument("--before-src", default="", help="the src/ of older code, measured beside this one")
    parser.add_argument("--results", default="results", help="folder of the results files")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        what, kind = args.worker
        print(json.dumps({"speed": speed, "syncs": syncs, "phases": phases}[what](kind, args)))
        return

    import torch

    here = str(Path(__file__).resolve().parents[1] / "src")
    versions = {"after": here, **({"before": args.before_src} if args.before_src else {})}
    device = "gpu" if args.device.startswith("cuda") else "cpu"
    out = {"device": torch.cuda.get_device_name(0) if device == "gpu" else platform.processor() or platform.machine(),
           "threads": args.threads, "torch": torch.__version__, "warmup": args.warmup, "steps": args.steps,
           "views": Path(args.views).name, "demos": Path(args.demos).name, "kinds": {}}
    for kind in args.kinds:
        entry = {"phases": _worker(here, "phases", kind)}
        runs: dict[str, list[float]] = {v: [] for v in versions}
        for r in range(args.repeats):  # in turns, the order flipped every repeat
            for version in list(versions)[::(-1) ** r]:
                runs[version].append(_worker(versions[version], "speed", kind)["steps_per_s"])
        for version, rs in runs.items():
            entry[version] = {"steps_per_s": statistics.median(rs), "all_steps_per_s": rs,
                              **_worker(versions[version], "syncs", kind)}
        if args.compile:  # once: compiling takes minutes on a CPU
            entry[f"after_compile_{args.compile}"] = _worker(here, "speed", kind, args.compile)
        out["kinds"][kind] = entry
        print(kind, json.dumps(entry), flush=True)
        write(out, device, Path(args.results))  # after each training: a run cut short keeps what it measured


def write(out: dict, device: str, results: Path) -> None:
    """Merge the entries of `out` into the results files (the trainings not measured this time are kept)."""
    path = results / "train_step_profile.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[device] = {**out, "kinds": {**data.get(device, {}).get("kinds", {}), **out["kinds"]}}
    path.write_text(json.dumps(data, indent=2) + "\n")
    if "don" in out["kinds"]:  # the DON step's profile in gpu.json, beside the GPU figures of issue #17
        gpu_path = results / "gpu.json"
        gpu = json.loads(gpu_path.read_text()) if gpu_path.exists() else {}
        don = out["kinds"]["don"]
        gpu.setdefault("profile", {})[device] = {**{f"{p}_ms": don["phases"][f"{p}_ms"] for p in PHASES},
                                                 "syncs_per_step": don["after"]["syncs_per_step"]}
        if device == "gpu":
            for kind in ("cnn", "cnnd"):
                if kind in out["kinds"]:
                    gpu.setdefault("gpu", {})[f"{kind}_steps_per_s"] = out["kinds"][kind]["after"]["steps_per_s"]
        gpu_path.write_text(json.dumps(gpu, indent=2) + "\n")
    lines = ["# Where a training step's time goes", "",
             "`python benchmarks/train_step_profile.py --views V --demos D --before-src OLD/src` (issue #43). Each "
             "training runs through its real loop; a phase's time waits for the device at its boundaries; `other` is "
             "the rest of a step in the same run (seeding, logging, the progress bar); syncs are the "
             "calls per step that make the host wait for a GPU (the same calls on a CPU, where they cost nothing). "
             "`before`/`after`: the older code's steps/s beside this code's, measured in the same run, in turns (the "
             "order flipped each time): the median, and every measurement in brackets.", ""]
    for dev, o in data.items():
        lines += [f"## {dev}: {o['device']}, {o['threads']} torch threads, torch {o['torch']}", "",
                  f"Views {o['views']}, demonstrations {o['demos']}; mean over {o['steps']} steps after "
                  f"{o['warmup']} warm-up steps.", "",
                  "| training | " + " | ".join(f"{p} ms" for p in (*PHASES, "other")) + " | syncs/step before"
                  " -> after | steps/s before | steps/s after | compiled steps/s |",
                  "|---|" + "---|" * (len(PHASES) + 5)]
        for kind, e in o["kinds"].items():
            compiled = next((f"{v['steps_per_s']} ({k.rsplit('_', 1)[1]})" for k, v in e.items()
                             if k.startswith("after_compile")), "–")
            before = e.get("before", {})
            lines.append(f"| {kind} | " + " | ".join(str(e["phases"][f"{p}_ms"]) for p in (*PHASES, "other"))
                         + f" | {before.get('syncs_per_step', '–')} -> {e['after']['syncs_per_step']} | "
                         f"{_runs(before)} | {_runs(e['after'])} | {compiled} |")
        lines.append("")
    (results / "train_step_profile.md").write_text("\n".join(lines))


def _runs(entry: dict) -> str:
    if not entry:
        return "–"
    return f"{entry['steps_per_s']:.2f} ({', '.join(f'{v:.2f}' for v in entry['all_steps_per_s'])})"


if __name__ == "__main__":
    main()
