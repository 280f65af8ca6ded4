"""The policy learner on the multi-object tasks: each head with ground-truth keypoints (the upper reference, which
separates the learner from vision), and proprioception alone (blind), under the `converged` recipe
(`dckp.policy.config.POLICY_PRESETS["converged"]`: windows, Adam 1e-3, batch 100, the checkpoint with the best
success on validation rollouts, seeds 2,000,000 on), evaluated on the table's seeds (1,000,000 on).

    python benchmarks/learner.py                                  # every cell (hours on 2 cores)
    python benchmarks/learner.py --tasks nut_assembly --heads rnn-gmm --encoders gt-kp

Per task, in `--out/<task>/`: `demos.h5` (`--demos` expert demonstrations from seed 0, collected if missing, at
`--image-size`: gt-kp and blind read no image, with the task's DART noise `dart_noise` or `--noise`),
`references.safetensors` (chosen on the object masks without a DON, as `dckp keypoints` without `--don`) and a
policy folder per cell `<encoder>_<head>/` (its `eval/` holds the evaluation). Every stage resumes: a killed
training continues from its checkpoint, an evaluation grows from the episodes it recorded, and a cell already in the
results is not run again, unless it was trained with another step count than the preset's (an earlier preset): then
it is trained again and replaces it.

Writes `results/learner.json` (`<task>.<encoder>.<head>` = `{rate, ci95, episodes, train_s, steps, best_step,
demos}`; `train_s` is this run's training wall time, validation rollouts included, summed over sittings),
`results/learner_fit.json` (`<task>.<encoder>.<head>` = the kept policy's mean |action error| per action dimension,
teacher-forced on its first 20 demonstrations: `fit_error`), `results/learner_runs/<task>/<folder>.json` (what each
policy folder recorded: `{noise, finished, validation}`, `record_runs`), `results/learner.md` and
`results/learner_<task>.png` (validation success against steps, per head), both made from those files alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from dckp.cli.main import signals_as_interrupt
from dckp.config import atomic_write_bytes, preset, save_json
from dckp.data import Dataset
from dckp.errors import Interrupted
from dckp.evaluation import evaluate_policy
from dckp.evaluation.validation import VAL_SEED_START, validate_folder
from dckp.keypoints.select import select_references
from dckp.learn import train_on_demos
from dckp.policy.config import POLICY_PRESETS
from dckp.policy.kept import read_records
from dckp.sim.collect import collect_demos
from dckp.sim.config import COLLECT_ADDED, NOISE_PHASES, CollectConfig
from dckp.sim.tasks import get_task

TASKS = ["nut_assembly", "pick_place_clutter"]
SWEEP_SEED_START = VAL_SEED_START + 10_000  # validation seeds apart from the checkpoint choice's
HEADS = ["rnn-gmm", "diffusion", "lstm"]


def cell_config(head: str, args):
    cfg = preset(POLICY_PRESETS, "converged")
    if head != cfg.head:
        cfg = dataclasses.replace(cfg, head=head, head_options={"seq_len": 10} if head == "lstm" else {})
    return dataclasses.replace(cfg, steps=args.steps, val_every=args.val_every, val_episodes=args.val_episodes,
                               lr=args.lr or cfg.lr)


def exploration(cfg) -> str:
    """The folder suffix of a cell trained with another learning rate or step count than the preset's ("" for the
    preset's own)."""
    base = POLICY_PRESETS["converged"]
    return (f"_lr{cfg.lr:g}" if cfg.lr != base.lr else "") + (f"_steps{cfg.steps}" if cfg.steps != base.steps else "")


def run_cell(task_dir: Path, encoder: str, head: str, args) -> dict | None:
    """Train (and, with the preset's learning rate and steps, evaluate) one cell; None for an exploration, whose
    policy is only rolled out on validation seeds."""
    cfg = cell_config(head, args)
    explore = exploration(cfg)
    folder = task_dir / f"{encoder}_{head}{explore}"
    spec = {"name": encoder, "options": {},
            "artefacts": {"references": str(task_dir / "references.safetensors")} if encoder == "gt-kp" else {}}
    folder.mkdir(parents=True, exist_ok=True)
    timing = folder / "train_s.json"
    spent = json.loads(timing.read_text())["train_s"] if timing.exists() else 0.0
    if not (folder / "policy.safetensors").exists():
        start = time.time()
        try:
            result = train_on_demos(task_dir / "demos.h5", spec, cfg, folder)
        finally:
            spent += time.time() - start
            save_json({"train_s": spent}, timing)
    else:
        result = json.loads((folder / "policy.json").read_text())
    if explore:
        print(json.dumps({"explored": str(folder), "validation": read_records(folder), "train_s": round(spent)}))
        return None
    ev = evaluate_policy(folder, args.episodes, workers=args.workers, videos=0)
    with Dataset(task_dir / "demos.h5") as ds:
        demos = len(ds.episodes)
    return {"rate": ev["success_rate"], "ci95": ev["ci95"], "episodes": ev["episodes"], "train_s": round(spent, 1),
            "steps": cfg.steps, "best_step": result["best_step"], "demos": demos}


def sampler_sweep(task_dir: Path, encoder: str, steps: list[int], args) -> None:
    """The trained diffusion cell's kept weights rolled out with each DDIM step count in `steps` (fewer: a faster
    planning step), each as a policy folder `<encoder>_diffusion_ddim<K>/`, on `--val-episodes` validation seeds
    from SWEEP_SEED_START: other seeds than those its checkpoint was chosen on, so that the default count is not
    favoured by the choice."""
    cell = task_dir / f"{encoder}_diffusion"
    if not (cell / "policy.safetensors").exists():
        return
    meta = json.loads((cell / "policy.json").read_text())
    for k in steps:
        folder = task_dir / f"{encoder}_diffusion_ddim{k}"
        if read_records(folder):
            continue
        folder.mkdir(exist_ok=True)
        shutil.copyfile(cell / "policy.safetensors", folder / "policy.safetensors")
        shutil.copyfile(cell / "run.json", folder / "run.json")
        save_json({**meta, "head": {**meta["head"], "options": {**meta["head"]["options"], "sample_steps": k}}},
                  folder / "policy.json")
        r = validate_folder(str(folder), args.val_episodes, seed_start=SWEEP_SEED_START, workers=args.workers)
        with open(folder / "validation.jsonl", "a") as f:
            f.write(json.dumps({"step": meta["best_step"], **r}) + "\n")
        print(json.dumps({"swept": str(folder), **r}))


def fit_error(folder: Path, demos: Path, n: int = 20) -> list[float]:
    """The mean |action error| per action dimension when the policy in `folder` acts, from a reset, on each of its
    first `n` demonstrations' own observations in turn (teacher-forced: how well the head fits what it was trained
    on, apart from closed-loop drift)."""
    import numpy as np

    from dckp.learn import cached_features
    from dckp.policy.model import PROPRIO_KEYS, proprioception
    from dckp.policy.train import load_policy

    policy = load_policy(folder).eval()
    errors = []
    with Dataset(demos) as ds:
        for ep, features in zip(ds.episodes[:n], cached_features(folder / "features.h5"), strict=False):
            proprio = proprioception({k: ds.array(ep, k) for k in PROPRIO_KEYS}, policy.cfg.proprio)
            obs = torch.from_numpy(np.concatenate([features, proprio], 1)).float()
            policy.reset()
            acted = torch.cat([policy.act(o[None]) for o in obs]).numpy()
            errors.append(np.abs(acted - ds.actions(ep)))
    return np.concatenate(errors).mean(0).astype(float).round(4).tolist()


def demo_noise(demos: Path) -> dict:
    """The DART noise of `demos`: `{noise, noise_phases}` (CollectConfig)."""
    with Dataset(demos) as ds:
        return {k: ds.config["collect"].get(k, COLLECT_ADDED[k]) for k in ("noise", "noise_phases")}


def noise_label(rec: dict) -> str:
    """A run's noise as the report shows it: `0.3`, or `0.3 motion` where it left the precise phases out."""
    phases = rec.get("noise_phases", COLLECT_ADDED["noise_phases"])
    return f"{rec['noise']:g}" + (f" {phases}" if rec["noise"] and phases != "all" else "")


def record_runs(runs: Path, out: Path, tasks) -> None:
    """What each policy folder under `runs/<task>/` recorded (its demonstrations' DART noise, whether its training
    finished, its validation rollouts) copied to `out/learner_runs/<task>/<folder>.json`, where the report and the
    curves read it: they outlive the run folders, which stay on the machine that made them."""
    for task in tasks:
        if not (runs / task / "demos.h5").exists():
            continue
        noise = demo_noise(runs / task / "demos.h5")
        for folder in sorted(f for f in (runs / task).glob("*_*") if f.is_dir()):
            refs = json.loads((folder / "run.json").read_text())["encoder"]["artefacts"].get("references") \
                if (folder / "run.json").exists() else None
            save_json({**noise, "references": refs and digest(folder / refs),
                       "finished": (folder / "policy.safetensors").exists(),
                       "validation": list(read_records(folder).values())},
                      out / "learner_runs" / task / f"{folder.name}.json")


def digest(path: Path) -> str:
    """The first 12 hex digits of a file's SHA-256: which references a cell was trained with."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def write(results: dict, out: Path, runs: Path, refit: str = "") -> None:
    """`refit`: the cell just (re)measured, whose fit is measured again."""
    save_json(results, out / "learner.json")
    record_runs(runs, out, results)
    recorded = {task: {f.stem: json.loads(f.read_text()) for f in sorted((out / "learner_runs" / task).glob("*.json"))}
                for task in results}
    p = POLICY_PRESETS["converged"]
    lines = ["# Policy learner on the multi-object tasks", "",
             f"`python benchmarks/learner.py`: the `converged` recipe (windows, Adam {p.lr:g}, batch {p.batch_size}, "
             f"the best of the checkpoints kept every {p.val_every} steps on {p.val_episodes} validation rollouts from "
             "seed 2,000,000; the 10000-step cells of an earlier preset kept one every 1000), evaluated on seeds "
             "1,000,000 on. 2-core CPU; `train_s` includes the validation rollouts that ran beside the training. "
             "`noise`: the DART noise of the cell's demonstrations (`--noise`; `--noise-phases`: `motion`: not in the "
             "phases that close on or let go of an object; `taper`: in every phase, fading to none within 5 cm of each "
             "phase's target). What each run recorded is in "
             "`learner_runs/<task>/<folder>.json`.", "",
             "| task | encoder | head | success [95 % CI] | episodes | demos | noise | steps | best step | train min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task, encoders in results.items():
        for encoder, heads in encoders.items():
            for head, r in heads.items():
                rec = recorded[task].get(f"{encoder}_{head}", {})
                noise = noise_label(rec) if "noise" in rec else "?"
                lines.append(f"| {task} | {encoder} | {head} | {r['rate']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
                             f" | {r['episodes']} | {r['demos']} | {noise} | {r['steps']} | {r['best_step']} | "
                             f"{r['train_s'] / 60:.0f} |")
    cells = {task: {f"{e}_{h}" for e, heads in encoders.items() for h in heads} for task, encoders in results.items()}
    explored = [(task, name, rec) for task in results for name, rec in recorded[task].items()
                if name not in cells[task] and "_ddim" not in name]
    if explored:
        lines += ["", "Explorations (`--lr`, `--steps`) and runs a cell replaced (`<folder>_<what changed>`), rolled "
                  "out on validation seeds only: successes of 20 per kept step.", ""]
        lines += [f"- {task} {name} (noise {noise_label(rec)}): "
                  + ", ".join(f"{r['step']}: {r['successes']}" for r in rec["validation"])
                  + ("" if rec["finished"] else " (stopped before its last step)") for task, name, rec in explored]
    swept = [(task, name, rec) for task in results for name, rec in sorted(
        recorded[task].items(), key=lambda kv: (kv[0].split("_ddim")[0], int(kv[0].split("_ddim")[-1])
                                                if "_ddim" in kv[0] else 0)) if "_ddim" in name]
    if swept:
        lines += ["", f"The diffusion cells' kept weights sampled with fewer DDIM steps per plan (`--sample-steps`), "
                  f"on validation seeds from {SWEEP_SEED_START:,} (not those the checkpoint was chosen on):", ""]
        lines += [f"- {task} {name}: {r['successes']}/{r['episodes']}" for task, name, rec in swept
                  for r in rec["validation"]]
    fit_path = out / "learner_fit.json"  # measured where the cell's policy is, kept for every other machine
    fit = json.loads(fit_path.read_text()) if fit_path.exists() else {}
    fit.pop(refit, None)
    for task, encoders in results.items():
        for encoder, heads in encoders.items():
            for head in heads:
                folder = runs / task / f"{encoder}_{head}"
                if f"{task}.{encoder}.{head}" not in fit and (folder / "features.h5").exists():  # frozen encoders
                    fit[f"{task}.{encoder}.{head}"] = fit_error(folder, runs / task / "demos.h5")
    save_json(fit, fit_path)
    lines += ["", "Fit (`learner_fit.json`, per action dimension): each cell's mean |action error| when its policy "
              "acts on its first 20 demonstrations' own observations (teacher-forced, from a reset; actions in [-1, "
              "1]): how well the head fits its training data, apart from closed-loop drift. On demonstrations with "
              "DART noise it also counts, for a head that executes chunks of actions (diffusion: 8), the corrections "
              "of noise that came after the chunk was planned, which it cannot foresee.", "",
              "| cell | translation | rotation | gripper |", "|---|---|---|---|"]
    lines += [f"| {cell} | {sum(e[:3]) / 3:.3f} | {sum(e[3:6]) / 3:.3f} | {e[6]:.3f} |"
              for cell, e in sorted(fit.items())]
    unplotted = [f"{task} {name}" for task in results for name, rec in recorded[task].items()
                 if not rec["validation"] and "_ddim" not in name]
    for task in results:
        lines += ["", f"![{task}](learner_{task}.png)"]
    if unplotted:
        lines += ["", "Not in the curves: " + ", ".join(unplotted) + " (trained on a machine whose run folders are "
                  "gone, before their validation records were kept here; their curves are in the png files of "
                  "commit dc12f9e)."]
    atomic_write_bytes(out / "learner.md", ("\n".join(lines) + "\n").encode())
    from matplotlib.figure import Figure

    for task in results:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for name, rec in recorded[task].items():
            if rec["validation"] and "_ddim" not in name:  # curves only
                lr = "" if "_lr" in name else f"_lr{p.lr:g}"
                ax.plot([r["step"] for r in rec["validation"]], [r["rate"] for r in rec["validation"]], marker="o",
                        label=f"{name}{lr} (noise {noise_label(rec)})")
        ax.set(xlabel="training step", ylabel="validation success", ylim=(-0.02, 1.02), title=f"{task}: validation "
               "rollouts (seeds from 2,000,000)")
        ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        atomic_write_bytes(out / f"learner_{task}.png", buf.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--encoders", nargs="+", default=["gt-kp", "blind"])
    p.add_argument("--heads", nargs="+", default=HEADS)
    p.add_argument("--demos", type=int, default=140, help="expert demonstrations per task (the paper's 140)")
    p.add_argument("--image-size", type=int, default=128, help="demonstration image size")
    p.add_argument("--noise", type=float, default=None, help="DART noise of the demonstrations (CollectConfig.noise; "
                   "default: the task's dart_noise, chosen on validation: gt-kp rnn-gmm succeeded in 100 seeds from "
                   f"{SWEEP_SEED_START:,} on pick_place_clutter in 0.39 with 0.3, 0.28 with none; on nut_assembly in "
                   "0.65 with 0.2, 0.54 with none)")
    p.add_argument("--noise-phases", default=None, choices=NOISE_PHASES, help="where that noise acts "
                   "(CollectConfig.noise_phases; default: the task's dart_phases)")
    p.add_argument("--steps", type=int, default=POLICY_PRESETS["converged"].steps, help="another step count than "
                   "the preset's (%(default)s): an exploration in <encoder>_<head>_steps<N>/, rolled out on validation "
                   "seeds only (no evaluation, no results)")
    p.add_argument("--lr", type=float, default=0.0, help="another learning rate than the preset's: an exploration "
                   "in <encoder>_<head>_lr<lr>/, rolled out on validation seeds only (no evaluation, no results)")
    p.add_argument("--sample-steps", type=int, nargs="*", default=[], help="diffusion cells: also roll the kept "
                   "weights out with these DDIM steps per plan, on validation seeds (a faster planning step; "
                   "<encoder>_diffusion_ddim<K>/, no evaluation)")
    p.add_argument("--val-every", type=int, default=POLICY_PRESETS["converged"].val_every,
                   help="steps between kept checkpoints (the 10000-step cells of results/learner.json kept every 1000)")
    p.add_argument("--val-episodes", type=int, default=POLICY_PRESETS["converged"].val_episodes)
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes per cell (seeds 1,000,000 on)")
    p.add_argument("--workers", type=int, default=2, help="evaluation processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training (1: steady beside other "
                   "work on 2 cores, where a 2-thread pool stalls)")
    p.add_argument("--out", default="runs/learner")
    p.add_argument("--results", default="results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs, out = Path(args.out), Path(args.results)
    path = out / "learner.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    # SIGTERM and SIGHUP (`timeout`, a closed session) stop as Ctrl-C does, through whatever SIGINT handler is in
    # place (a training finishes and saves its step), so the same command resumes
    try:
        with signals_as_interrupt([]):
            run(args, runs, out, results)
    except (Interrupted, KeyboardInterrupt) as e:
        sys.exit(f"interrupted: {str(e) or 'stopped'}; the same command resumes")


def run(args, runs: Path, out: Path, results: dict) -> None:
    for task in args.tasks:
        task_dir = runs / task
        t = get_task(task)
        want = {"noise": t.dart_noise if args.noise is None else args.noise,
                "noise_phases": t.dart_phases if args.noise_phases is None else args.noise_phases}
        demos = task_dir / "demos.h5"
        if not demos.exists():
            collect_demos(CollectConfig(task=task, demos=args.demos, image_size=args.image_size, workers=args.workers,
                                        **want), str(demos))
        noise = demo_noise(demos)
        if noise_label(noise) != noise_label(want):
            sys.exit(f"{demos}: collected with --noise {noise['noise']} --noise-phases {noise['noise_phases']}, not "
                     f"{want['noise']} {want['noise_phases']}; give those or another --out")
        if not (task_dir / "references.safetensors").exists():
            select_references(None, demos, task_dir / "references.safetensors")
        for encoder in args.encoders:
            for head in args.heads:
                cfg, done = cell_config(head, args), results.get(task, {}).get(encoder, {}).get(head)
                made = out / "learner_runs" / task / f"{encoder}_{head}.json"
                made = json.loads(made.read_text()) if made.exists() else noise
                refs = digest(task_dir / "references.safetensors") if encoder == "gt-kp" else None
                if not exploration(cfg) and done and done["steps"] == cfg.steps and \
                        noise_label(made) == noise_label(noise) and made.get("references") == refs:
                    continue  # a cell of other steps, noise or references (earlier settings) is trained again
                cell = run_cell(task_dir, encoder, head, args)
                if cell is None:
                    continue
                results.setdefault(task, {}).setdefault(encoder, {})[head] = cell
                write(results, out, runs, refit=f"{task}.{encoder}.{head}")
                print(json.dumps({f"{task}.{encoder}.{head}": results[task][encoder][head]}))
            if "diffusion" in args.heads and args.sample_steps:
                sampler_sweep(task_dir, encoder, args.sample_steps, args)
    if results:
        write(results, out, runs)


if __name__ == "__main__":
    main()
