"""The `dckp` command. Each subcommand maps its flags onto one config dataclass (see `--help`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from dckp.config import add_config_args, apply_args, preset, save_json
from dckp.errors import DckpError


def _config_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".config.json")


def cmd_tasks(args) -> None:
    from dckp.sim.tasks import TASKS

    print(f"{'task':20} {'stands in for':20} {'objects':28} {'cameras':30} horizon demos(cpu/paper)")
    for t in TASKS.values():
        print(f"{t.name:20} {t.stands_in_for:20} {','.join(t.objects):28} {','.join(t.cameras):30} "
              f"{t.horizon:7} {t.demos['cpu']}/{t.demos['paper']}")


def cmd_collect(args) -> None:
    from dckp.sim.collect import collect_demos
    from dckp.sim.config import COLLECT_PRESETS

    cfg = apply_args(preset(COLLECT_PRESETS, args.preset), args)
    summary = collect_demos(cfg, args.out, preset=args.preset)
    save_json({"preset": args.preset, **dataclasses.asdict(cfg)}, _config_path(args.out))
    print(json.dumps({"out": args.out, **summary}, indent=1))


def cmd_collect_views(args) -> None:
    from dckp.sim.collect import collect_views
    from dckp.sim.config import VIEWS_PRESETS

    cfg = apply_args(preset(VIEWS_PRESETS, args.preset), args)
    summary = collect_views(cfg, args.out)
    save_json({"preset": args.preset, **dataclasses.asdict(cfg)}, _config_path(args.out))
    print(json.dumps({"out": args.out, **summary}, indent=1))


def cmd_fuse(args) -> None:
    from dckp.data import Dataset
    from dckp.geometry.fuse import fuse_file
    from dckp.geometry.masks import MASK_PRESETS
    from dckp.sim.tasks import TASKS
    from dckp.viz.fuse import fuse_picture

    with Dataset(args.file) as ds:
        task = ds.task
    cfg = preset(MASK_PRESETS, args.preset)
    if task in TASKS:  # the task's workspace box, unless given on the command line
        lo, hi = TASKS[task].workspace
        cfg = dataclasses.replace(cfg, workspace_min=list(lo), workspace_max=list(hi))
    cfg = apply_args(cfg, args)
    summary = fuse_file(args.file, cfg)
    stem = Path(args.file).with_name(Path(args.file).stem)
    save_json({"preset": args.preset, **dataclasses.asdict(cfg)}, f"{stem}.fuse.config.json")
    picture = fuse_picture(args.file, Path(args.file).with_name(Path(args.file).stem + "_masks.png"))
    print(json.dumps({"file": args.file, "episodes": summary, "picture": picture}, indent=1))


def cmd_pretrain(args) -> None:
    import torch

    from dckp.don.config import DON_PRESETS
    from dckp.don.train import pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = apply_args(preset(DON_PRESETS, args.preset), args)
    summary = pretrain(args.views, cfg, args.out, checkpoint_every=args.checkpoint_every)
    print(json.dumps(summary, indent=1))


def cmd_eval_correspondence(args) -> None:
    from dckp.don.evaluate import evaluate_model, sample_eval_pairs
    from dckp.don.train import load_don

    model = load_don(args.run)
    results = {}
    for path in args.views:
        pairs = sample_eval_pairs(path, per_type=args.pairs, seed=args.seed)
        results[path] = evaluate_model(model, path, pairs)
    save_json(results, Path(args.run) / "eval_correspondence.json")
    print(json.dumps(results, indent=1))


def cmd_viz_descriptors(args) -> None:
    from dckp.don.train import load_don
    from dckp.viz.descriptors import descriptor_pictures

    out = args.out or Path(args.run) / "pictures"
    for line in descriptor_pictures(load_don(args.run), args.file, out, args.episode):
        print(line)


def cmd_keypoints(args) -> None:
    from dckp.don.train import load_don
    from dckp.keypoints.references import load_pixels
    from dckp.keypoints.select import select_references

    pixels = None
    if args.pixels:
        pixels = {cam: load_pixels(path).numpy() for cam, path in (p.split("=", 1) for p in args.pixels)}
    summary = select_references(load_don(args.run), args.demos, args.out, args.per_camera, pixels, seed=args.seed)
    print(json.dumps({"out": args.out, "cameras": summary}, indent=1))


def cmd_train_policy(args) -> None:
    import torch

    from dckp.encoders.config import EncoderConfig
    from dckp.policy.config import POLICY_PRESETS
    from dckp.policy.demos import train_on_demos

    torch.set_num_threads(args.threads or torch.get_num_threads())
    enc = EncoderConfig(**{f: getattr(args, f) for f in EncoderConfig.__dataclass_fields__
                           if getattr(args, f, None) is not None})
    cfg = preset(POLICY_PRESETS, args.preset)
    if args.steps is None:  # the paper's: 1000 steps for single-object tasks, 1500 for multi-object ones
        from dckp.data import Dataset

        with Dataset(args.demos) as ds:
            cfg = dataclasses.replace(cfg, steps=1500 if len(ds.streams(ds.episodes[0])) > 1 else 1000)
    cfg = apply_args(cfg, args)
    save_json({"encoder": dataclasses.asdict(enc), "policy": dataclasses.asdict(cfg)},
              Path(args.out) / "train_policy.config.json")
    print(json.dumps(train_on_demos(args.demos, enc.spec(), cfg, args.out), indent=1))


def cmd_evaluate(args) -> None:
    from dckp.evaluation import evaluate_policy
    from dckp.evaluation.config import EvalConfig

    cfg = apply_args(EvalConfig(), args)
    r = evaluate_policy(args.policy, cfg.episodes, cfg.seed_start, cfg.workers, cfg.videos, args.out,
                        max_steps=cfg.max_steps or None)
    print(json.dumps({k: r[k] for k in ("task", "episodes", "success_rate", "ci95", "mean_steps", "ms_per_step")},
                     indent=1))


def cmd_show(args) -> None:
    from dckp.viz.show import show

    for line in show(args.file, args.episode, args.out):
        print(line)


def cmd_run(args) -> None:
    from dckp.pipeline import RUN_PRESETS, run

    start = time.time()
    cfg = apply_args(preset(RUN_PRESETS, args.preset), args)
    out = args.out or f"runs/{cfg.task}"
    report = run(cfg, out, preset="paper" if args.preset == "paper" else "cpu")
    print(f"report: {report} ({time.time() - start:.0f} s)")


def build_parser() -> argparse.ArgumentParser:
    from dckp.don.config import DonConfig
    from dckp.encoders.config import EncoderConfig
    from dckp.evaluation.config import EvalConfig
    from dckp.geometry.masks import MaskConfig
    from dckp.pipeline import RunConfig
    from dckp.policy.config import PolicyConfig
    from dckp.sim.config import CollectConfig, ViewsConfig

    parser = argparse.ArgumentParser(prog="dckp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("tasks", help="list the simulated tasks").set_defaults(func=cmd_tasks)

    p = sub.add_parser("collect", help="collect successful expert demonstrations into an HDF5 file")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--out", required=True, help="output .h5 file (its config goes beside it)")
    add_config_args(p, CollectConfig)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("collect-views", help="film static scenes from moving cameras, plus arm-only sequences")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--out", required=True, help="output .h5 file (its config goes beside it)")
    add_config_args(p, ViewsConfig)
    p.set_defaults(func=cmd_collect_views)

    p = sub.add_parser("fuse", help="object masks for every frame of a views file, by TSDF fusion and clustering")
    p.add_argument("file", help="a views file from `dckp collect-views` (rewritten in place, atomically)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    add_config_args(p, MaskConfig)
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("pretrain", help="train a Dense Object Net on fused view files (resumes if interrupted)")
    p.add_argument("--views", nargs="+", required=True, help="view files that `dckp fuse` has given masks")
    p.add_argument("--out", required=True, help="run folder: checkpoints, log, curves, config")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between resumable checkpoints")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_config_args(p, DonConfig)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval-correspondence", help="correspondence accuracy of a pretrained DON on held-out views")
    p.add_argument("run", help="a `dckp pretrain` run folder")
    p.add_argument("--views", nargs="+", required=True, help="held-out view files (ground truth from depth/poses)")
    p.add_argument("--pairs", type=int, default=20, help="pairs per pair type")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_eval_correspondence)

    p = sub.add_parser("viz-descriptors", help="descriptor images (PCA to RGB) and correspondence heatmaps")
    p.add_argument("run", help="a `dckp pretrain` run folder")
    p.add_argument("--file", required=True, help="a demos or views file")
    p.add_argument("--episode", default=None)
    p.add_argument("--out", default=None, help="folder (default: RUN/pictures)")
    p.set_defaults(func=cmd_viz_descriptors)

    p = sub.add_parser("keypoints", help="choose reference keypoints on the first frame of the demonstrations")
    p.add_argument("--run", required=True, help="a `dckp pretrain` run folder")
    p.add_argument("--demos", required=True)
    p.add_argument("--out", required=True, help="references file (.safetensors)")
    p.add_argument("--per-camera", type=int, default=16, help="references per camera, equal per object")
    p.add_argument("--pixels", nargs="+", default=None, metavar="CAMERA=FILE.json",
                   help='hand-picked pixels per camera instead: JSON {"uv": [[u, v], ...]}')
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_keypoints)

    p = sub.add_parser("train-policy", help="train the LSTM policy on demonstrations through a frozen encoder")
    p.add_argument("--demos", required=True)
    p.add_argument("--out", required=True, help="policy folder")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_config_args(p, EncoderConfig)
    add_config_args(p, PolicyConfig)
    p.set_defaults(func=cmd_train_policy)

    p = sub.add_parser("evaluate", help="closed-loop success rate of a policy folder, with rollout videos")
    p.add_argument("policy", help="a `dckp train-policy` folder")
    p.add_argument("--out", default=None, help="folder for eval.json and videos (default: POLICY/eval)")
    add_config_args(p, EvalConfig)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("show", help="summarise a dataset and write a picture grid and a video of an episode")
    p.add_argument("file")
    p.add_argument("--episode", default=None, help="episode name (default: the first)")
    p.add_argument("--out", default=None, help="folder for the pictures (default: beside the file)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("run", help="the whole pipeline for one task, skipping finished stages; ends in report.html")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper", "demo"])
    p.add_argument("--out", default=None, help="run folder (default: runs/TASK)")
    add_config_args(p, RunConfig)
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    try:
        args.func(args)
    except DckpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
