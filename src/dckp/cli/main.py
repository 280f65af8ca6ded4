"""The `dckp` command. Each subcommand maps its flags onto one config dataclass (see `--help`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from dckp.config import add_config_args, apply_args, bare_switches, check_device_here, preset, save_json
from dckp.errors import DckpError, Interrupted


class Write(NamedTuple):
    """An output a command writes: `args.<field>` (or `default(args)` when not given), a "file" or a "folder" (or a
    function of the args giving one), none of `inputs(args)`; checked, locked and cleaned up by
    `dckp.outputs.writing` before the command's work starts."""

    field: str = "out"
    kind: str | Callable = "file"
    inputs: Callable = lambda args: []
    default: Callable | None = None
    resumes: bool = False  # a folder the command continues from (--force starts over)
    in_place: bool = False  # a file the command rewrites in place
    skip: Callable = lambda args: False  # nothing is written this time (a dry run): not checked, locked or touched

    def lock(self, args):
        from dckp.outputs import writing

        if getattr(args, self.field) is None:
            setattr(args, self.field, str(self.default(args)))
        path = getattr(args, self.field)
        kind = self.kind(args) if callable(self.kind) else self.kind
        inputs = [p for p in self.inputs(args) if p]
        flag = self.field if self.in_place else "--" + self.field.replace("_", "-")
        return writing(path, kind, inputs, getattr(args, "force", False) or False, self.resumes, self.in_place, flag)


def _value(args, name: str, cls):
    """The value of a config field: its flag's, or the dataclass's default."""
    value = getattr(args, name, None)
    return getattr(cls(), name) if value is None else value


def _writes(p: argparse.ArgumentParser, *writes: Write) -> None:
    """`p`'s outputs, and its `--force` flag where one is not rewritten in place."""
    if not all(w.in_place for w in writes):
        p._configs.append(("dckp.outputs", "OutputConfig", None))
    p.set_defaults(writes=writes)


def _config_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".config.json")


def cmd_tasks(args) -> None:
    from dckp.sim.tasks import TASKS
    from dckp.sim.tasks.base import describe_randomisation

    print(f"{'task':20} {'stands in for':20} {'objects':28} {'cameras':30} horizon demos(cpu/paper) "
          "converged-noise")
    print("    initial-state randomisation")
    for t in TASKS.values():
        print(f"{t.name:20} {t.stands_in_for:20} {','.join(t.objects):28} {','.join(t.cameras):30} "
              f"{t.horizon:7} {t.demos['cpu']:>6}/{t.demos['paper']:<9} {t.dart_noise:g}"
              + (f" ({t.dart_phases} phases)" if t.dart_phases != "all" else ""))
        print(f"    {describe_randomisation(t.randomisation)}")


def _at_least(args, flag: str, low: int) -> None:
    value = getattr(args, flag.lstrip("-").replace("-", "_"))
    if value < low:
        raise DckpError(f"must be >= {low}, got {value}", field=flag)


def _check_dataset(path: str, kind: str) -> None:
    """Reject a file of the wrong kind, or with any unreadable or unsound frame, before long work starts."""
    from dckp.data import Dataset

    with Dataset(path) as ds:
        ds.expect(kind)
        ds.validate()


def cmd_collect(args) -> None:
    from dckp.sim.collect import collect_demos
    from dckp.sim.config import COLLECT_PRESETS, RENDER
    from dckp.sim.tasks import get_task

    cfg = apply_args(preset(COLLECT_PRESETS, args.preset), args)
    if cfg.demos == 0:  # the task's number, saved as the number used
        cfg = dataclasses.replace(cfg, demos=get_task(cfg.task).demos[args.preset])
    summary = collect_demos(cfg, args.out, preset=args.preset)
    save_json({"preset": args.preset, "render": RENDER, **dataclasses.asdict(cfg)}, _config_path(args.out))
    print(json.dumps({"out": args.out, **summary}, indent=1))


def cmd_collect_views(args) -> None:
    from dckp.sim.collect import collect_views
    from dckp.sim.config import RENDER, VIEWS_PRESETS

    cfg = apply_args(preset(VIEWS_PRESETS, args.preset), args)
    summary = collect_views(cfg, args.out)
    save_json({"preset": args.preset, "render": RENDER, **dataclasses.asdict(cfg)}, _config_path(args.out))
    print(json.dumps({"out": args.out, **summary}, indent=1))


def cmd_fuse(args) -> None:
    from dckp.data import Dataset
    from dckp.geometry.config import MASK_PRESETS
    from dckp.geometry.fuse import fuse_file
    from dckp.sim.tasks import workspace_of
    from dckp.viz.fuse import fuse_picture

    with Dataset(args.file) as ds:
        workspace, expected = workspace_of(ds), ds.num_objects
    cfg = preset(MASK_PRESETS, args.preset)
    if workspace is not None:  # the file's workspace box, unless given on the command line
        cfg = dataclasses.replace(cfg, workspace_min=workspace[0], workspace_max=workspace[1])
    cfg = apply_args(cfg, args)
    summary = fuse_file(args.file, cfg)
    for ep, s in summary.items():
        if expected and not ep.startswith("arm_") and s["objects"] != expected:
            print(f"warning: {ep}: {s['objects']} objects found, the file says {expected} (see --dbscan-eps, "
                  "--min-cluster-points, --workspace-min/--workspace-max)", file=sys.stderr)
    stem = Path(args.file).with_name(Path(args.file).stem)
    save_json({"preset": args.preset, **dataclasses.asdict(cfg)}, f"{stem}.fuse.config.json")
    picture = fuse_picture(args.file, Path(args.file).with_name(Path(args.file).stem + "_masks.png"))
    print(json.dumps({"file": args.file, "episodes": summary, "picture": picture}, indent=1))


def cmd_import(args) -> None:
    from dckp.io.config import IMPORT_PRESETS
    from dckp.io.recordings import import_recordings

    cfg = apply_args(preset(IMPORT_PRESETS, args.preset), args)
    summary = import_recordings(args.sequences, args.arm_only, cfg, args.out)
    save_json({"preset": args.preset, **dataclasses.asdict(cfg)}, _config_path(args.out))
    print(json.dumps(summary, indent=1))


def cmd_pretrain(args) -> int:
    import torch

    from dckp.distributed import launch, world
    from dckp.don.config import DON_PRESETS
    from dckp.don.pairs import check_views
    from dckp.don.train import pretrain

    _at_least(args, "--threads", 0)
    _at_least(args, "--checkpoint-every", 1)
    _at_least(args, "--nproc", 1)
    cfg = apply_args(preset(DON_PRESETS, args.preset), args)
    if args.nproc > 1 and world().size == 1:  # bad input stops here, before the processes start
        for path in args.views:
            check_views(path)
        return launch(args.nproc, args.argv)
    if not world().main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 alone reports progress
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = pretrain(args.views, cfg, args.out, checkpoint_every=args.checkpoint_every)
    if world().main:
        print(json.dumps(summary, indent=1))
    return 0


def cmd_pretrain_representation(args) -> int:
    import torch

    from dckp.distributed import launch, world
    from dckp.representations.config import config_from_args
    from dckp.representations.train import check_files, pretrain_representation

    _at_least(args, "--threads", 0)
    _at_least(args, "--checkpoint-every", 1)
    _at_least(args, "--nproc", 1)
    if not args.views and not args.demos:
        raise DckpError("give --views and/or --demos files", field="--views")
    cfg = config_from_args(args.method, args.preset, args)
    if args.nproc > 1 and world().size == 1:  # bad input stops here, before the processes start
        check_files(args.method, [*args.views, *args.demos], cfg)
        return launch(args.nproc, args.argv)
    if not world().main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 alone reports progress
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = pretrain_representation(args.method, [*args.views, *args.demos], cfg, args.out,
                                      checkpoint_every=args.checkpoint_every)
    if world().main:
        print(json.dumps(summary, indent=1))
    return 0


def cmd_eval_correspondence(args) -> None:
    from dckp.don.evaluate import evaluate_model, sample_eval_pairs
    from dckp.don.train import load_don

    _at_least(args, "--pairs", 1)
    model = load_don(args.don)
    pairs = {path: sample_eval_pairs(path, per_type=args.pairs, seed=args.seed) for path in args.views}
    results = {path: evaluate_model(model, path, p) for path, p in pairs.items()}
    save_json(results, args.out)
    print(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def cmd_eval_keypoints(args) -> None:
    from dckp.evaluation.keypoint_error import keypoint_error, lines
    from dckp.evaluation.keypoint_error_config import KeypointErrorConfig

    try:
        cfg = KeypointErrorConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(KeypointErrorConfig)
                                     if getattr(args, f.name) is not None})
    except DckpError as e:  # name the flag
        raise DckpError(e.message, field="--" + (e.field or "flags").replace("_", "-")) from None
    result = keypoint_error(cfg)
    out = args.out or Path(cfg.don) / "keypoint_error.json"
    save_json(result, out)
    print("\n".join(lines(result)))
    print(f"wrote {out}")


def cmd_viz_descriptors(args) -> None:
    from dckp.data import Dataset
    from dckp.don.train import load_don
    from dckp.viz.descriptors import descriptor_pictures

    with Dataset(args.file) as ds:
        ds.pick_episode(args.episode)
    for line in descriptor_pictures(load_don(args.don), args.file, args.out, args.episode):
        print(line)


def cmd_keypoints(args) -> None:
    from dckp.data import Dataset
    from dckp.don.train import load_don
    from dckp.keypoints.references import load_pixels
    from dckp.keypoints.select import select_references

    _at_least(args, "--per-camera", 1)
    _at_least(args, "--frame", 0)
    with Dataset(args.demos) as ds:  # demonstrations, or the views of a recording (`dckp import`)
        ds.validate()
    if bool(args.workspace_min) != bool(args.workspace_max):
        raise DckpError("give both --workspace-min and --workspace-max, or neither (the file's box)",
                        field="--workspace-max")
    pixels = None
    if args.pixels:
        pixels = {cam: load_pixels(path).numpy() for cam, path in (p.split("=", 1) for p in args.pixels)}
    model = load_don(args.don).to(args.device) if args.don else None  # None: pixels for gt-kp, no descriptors
    summary = select_references(model, args.demos, args.out, args.per_camera, pixels,
                                episode=args.episode, seed=args.seed, frame=args.frame,
                                workspace=(args.workspace_min, args.workspace_max) if args.workspace_min else None)
    print(json.dumps({"out": args.out, "cameras": summary}, indent=1))


def cmd_train_policy(args) -> None:
    import torch

    from dckp.don.checkpoint import load_checkpoint_config
    from dckp.encoders.config import EncoderConfig, options_from_args
    from dckp.keypoints.select import load_references
    from dckp.learn import train_on_demos
    from dckp.policy.config import default_steps, policy_from_args

    _at_least(args, "--threads", 0)
    try:
        enc = EncoderConfig(**{f: getattr(args, f) for f in EncoderConfig.__dataclass_fields__
                               if getattr(args, f, None) is not None})
        options = options_from_args(enc.encoder, args)
    except DckpError as e:
        raise DckpError(e.message, path=e.path, field="--" + (e.field or "encoder").replace("_", "-")) from None
    cfg = policy_from_args(args.preset, args)
    _check_dataset(args.demos, "demos")
    if enc.references:
        load_references(enc.references)
    if enc.don:
        load_checkpoint_config(Path(enc.don) / "don.safetensors")
    if args.steps is None and args.preset != "converged":  # the paper's: 1000 (one camera) or 1500 steps
        from dckp.data import Dataset

        with Dataset(args.demos) as ds:
            cfg = dataclasses.replace(cfg, steps=default_steps(len(ds.streams(ds.episodes[0])), ds.task, args.preset))
    torch.set_num_threads(args.threads or torch.get_num_threads())
    save_json({"encoder": dataclasses.asdict(enc), "options": dataclasses.asdict(options),
               "policy": dataclasses.asdict(cfg)}, Path(args.out) / "train_policy.config.json")
    print(json.dumps(train_on_demos(args.demos, enc.spec(options), cfg, args.out), indent=1))


def cmd_evaluate(args) -> None:
    from dckp.evaluation import evaluate_policy
    from dckp.evaluation.config import EvalConfig

    cfg = apply_args(EvalConfig(), args)
    r = evaluate_policy(args.policy, cfg.episodes, cfg.seed_start, cfg.workers, cfg.videos, args.out,
                        max_steps=cfg.max_steps or None, device=cfg.device, task=cfg.task)
    print(json.dumps({k: r[k] for k in ("task", "episodes", "success_rate", "ci95", "mean_steps", "ms_per_step")},
                     indent=1))


def cmd_show(args) -> None:
    from dckp.viz.show import show

    for line in show(args.file, args.episode, args.out):
        print(line)


def cmd_view(args) -> None:
    from dckp.viz.view import ViewConfig, has_display, open_hint, view

    cfg = apply_args(ViewConfig(), args)
    if Path(args.file).is_dir():  # a policy folder: one rollout from cfg.seed
        from dckp.evaluation.rollout import record_rollout

        out = view(args.file, cfg, args.out, rollout=record_rollout(args.file, cfg.seed, cfg.max_steps))
    else:
        out = view(args.file, cfg, args.out)
    print(f"wrote {out}" + ("; opening the rerun viewer" if has_display() else f"; {open_hint(out)}"))


def cmd_export(args) -> None:
    from dckp.io.config import ExportConfig
    from dckp.io.export import export

    print(json.dumps(export(args.file, apply_args(ExportConfig(), args), args.out), indent=1))


def cmd_pick_references(args) -> None:
    from dckp.viz.picker import PickConfig, pick_references

    for line in pick_references(args.file, apply_args(PickConfig(), args), args.out):
        print(line)


def cmd_run(args) -> None:
    from dckp.pipeline import RUN_PRESETS, run

    start = time.time()
    cfg = apply_args(preset(RUN_PRESETS, args.preset), args)
    report = run(cfg, args.out, preset=args.preset)
    print(f"report: {report} ({time.time() - start:.0f} s)")


def cmd_table(args) -> None:
    from dckp.pipeline import RUN_PRESETS
    from dckp.table import dry_run, run_table
    from dckp.table.config import TableConfig
    from dckp.table.outputs import table_stem
    from dckp.table.runner import PENDING

    start = time.time()
    table = apply_args(TableConfig(), args)
    run = apply_args(preset(RUN_PRESETS, args.preset), args)
    if table.dry_run:
        print("\n".join(dry_run(table, run, args.out, preset=args.preset)))
        return
    status = run_table(table, run, args.out, preset=args.preset)  # writes table1.* as cells finish
    done = [cell for cell, s in status["cells"].items() if s in ("done", "recorded")]  # recorded: made elsewhere
    pending = [f"{t}/{m}" for (t, m), s in status["cells"].items() if s == PENDING]
    print(f"{len(done)} of {len(status['cells'])} cells in {Path(table.results) / table_stem(run)}.md "
          f"({time.time() - start:.0f} s)" + (f"; pending over --max-cell-hours: {', '.join(pending)}" if pending
                                               else ""))
    failed = {f"{t}/{m}": s for (t, m), s in status["cells"].items() if s not in ("done", "recorded", PENDING)}
    if failed:
        raise DckpError(f"{len(failed)} cell(s) failed: " + "; ".join(f"{c} ({s})" for c, s in failed.items())
                        + "; the same command retries them", field="table")


def _view_default(args) -> Path:
    from dckp.viz.view import ViewConfig, default_out

    return default_out(args.file, _value(args, "seed", ViewConfig))


def _show_default(args) -> Path:
    from dckp.viz.show import default_out

    return default_out(args.file)


def _export_kind(args) -> str:
    from dckp.io.config import ExportConfig

    return "file" if _value(args, "format", ExportConfig) == "robomimic" else "folder"


def _run_task(args) -> str:
    from dckp.pipeline import RUN_PRESETS

    return args.task or preset(RUN_PRESETS, args.preset).task


def _table_config():
    from dckp.table.config import TableConfig

    return TableConfig


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dckp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    presets = {"choices": ["cpu", "paper"], "help": "the settings every flag below starts from (default: cpu)"}

    sub.add_parser("tasks", help="list the simulated tasks").set_defaults(func=cmd_tasks)

    p = sub.add_parser("collect", help="collect successful expert demonstrations into an HDF5 file",
                       configs=[("dckp.sim.config", "CollectConfig", "COLLECT_PRESETS")])
    p.add_argument("--preset", default="cpu", **presets)
    p.add_argument("--out", required=True, help="output .h5 file (its config goes beside it)")
    p.set_defaults(func=cmd_collect)
    _writes(p, Write())

    p = sub.add_parser("collect-views", help="film static scenes from moving cameras, plus arm-only sequences",
                       configs=[("dckp.sim.config", "ViewsConfig", "VIEWS_PRESETS")])
    p.add_argument("--preset", default="cpu", **presets)
    p.add_argument("--out", required=True, help="output .h5 file (its config goes beside it)")
    p.set_defaults(func=cmd_collect_views)
    _writes(p, Write())

    p = sub.add_parser("fuse", help="object masks for every frame of a views file, by TSDF fusion and clustering",
                       configs=[("dckp.geometry.config", "MaskConfig", "MASK_PRESETS")])
    p.add_argument("file", help="a views file from `dckp collect-views` (rewritten in place, atomically)")
    p.add_argument("--preset", default="cpu", **presets)
    p.set_defaults(func=cmd_fuse)
    _writes(p, Write("file", in_place=True))

    p = sub.add_parser("import", help="RGB-D recordings (TUM RGB-D or a plain folder) into a views file "
                       "(docs/own-data.md)", configs=[("dckp.io.config", "ImportConfig", "IMPORT_PRESETS")])
    p.add_argument("sequences", nargs="+", help="sequence folders, one static scene each")
    p.add_argument("--arm-only", nargs="+", default=[], metavar="SEQUENCE",
                   help="sequence folders filming the arm alone, no objects (default: none)")
    p.add_argument("--out", required=True, help="output views .h5 file (its config goes beside it)")
    p.add_argument("--preset", default="cpu", **presets)
    p.set_defaults(func=cmd_import)
    _writes(p, Write(inputs=lambda a: [*a.sequences, *a.arm_only]))

    p = sub.add_parser("pretrain", help="train a Dense Object Net on fused view files (resumes if interrupted)",
                       configs=[("dckp.don.config", "DonConfig", "DON_PRESETS")])
    p.add_argument("--views", nargs="+", required=True, help="view files that `dckp fuse` has given masks")
    p.add_argument("--out", required=True, help="the DON run folder: checkpoints, log, curves, config")
    p.add_argument("--preset", default="cpu", **presets)
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="steps between resumable checkpoints; Ctrl-C also saves one (default: 100)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine, started with "
                   "torchrun: one per GPU, or gloo on the CPU (default: 1)")
    p.set_defaults(func=cmd_pretrain)
    _writes(p, Write(kind="folder", inputs=lambda a: a.views, resumes=True))

    p = sub.add_parser("pretrain-representation", help="pretrain a baseline representation (bvae, transporter, "
                       "monet) on views and demos files (resumes if interrupted)",
                       configs=[("dckp.representations.config", "add_representation_args", None)])
    p.add_argument("--method", required=True, choices=["bvae", "transporter", "monet"],
                   help="beta-VAE, Transporter keypoints or MONet slots (docs/representations.md)")
    p.add_argument("--views", nargs="+", default=[], help="view files from `dckp collect-views`, for bvae and monet "
                   "(default: none; give --views, --demos or both)")
    p.add_argument("--demos", nargs="+", default=[], help="demonstration files from `dckp collect`, for every method "
                   "(transporter learns from pairs of their frames) (default: none)")
    p.add_argument("--out", required=True, help="the run folder: checkpoints, log, curves, pictures, the model")
    p.add_argument("--preset", default="cpu", **presets)
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="steps between resumable checkpoints; Ctrl-C also saves one (default: 100)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine, started with "
                   "torchrun, each of --batch images: one per GPU, or gloo on the CPU (default: 1)")
    p.set_defaults(func=cmd_pretrain_representation)
    _writes(p, Write(kind="folder", inputs=lambda a: [*a.views, *a.demos], resumes=True))

    p = sub.add_parser("eval-correspondence", help="correspondence accuracy of a pretrained DON on held-out views")
    p.add_argument("don", help="a DON run folder (`dckp pretrain --out`)")
    p.add_argument("--views", nargs="+", required=True, help="held-out view files (ground truth from depth/poses)")
    p.add_argument("--pairs", type=int, default=20, help="pairs per pair type (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair sampling (default: 0)")
    p.add_argument("--out", default=None, help="JSON file for the results (default: DON/eval_correspondence.json)")
    p.set_defaults(func=cmd_eval_correspondence)
    _writes(p, Write(inputs=lambda a: [a.don, *a.views], default=lambda a: Path(a.don) / "eval_correspondence.json"))

    p = sub.add_parser("eval-keypoints", help="keypoint error of a DON on the frames of simulator demonstrations, "
                       "against ground-truth keypoints: median px and mm per camera, visible and occluded, raw and "
                       "symmetry-aware (docs/metrics.md)",
                       configs=[("dckp.evaluation.keypoint_error_config", "add_keypoint_error_args", None)])
    p.add_argument("--out", default=None, help="JSON file for the results (default: DON/keypoint_error.json)")
    p.set_defaults(func=cmd_eval_keypoints, out_is_file=True)

    p = sub.add_parser("viz-descriptors", help="descriptor images (PCA to RGB) and correspondence heatmaps")
    p.add_argument("don", help="a DON run folder (`dckp pretrain --out`)")
    p.add_argument("--file", required=True, help="a demos or views file")
    p.add_argument("--episode", default=None, help="episode name (default: the first)")
    p.add_argument("--out", default=None, help="folder (default: DON/pictures)")
    p.set_defaults(func=cmd_viz_descriptors)
    _writes(p, Write(kind="folder", inputs=lambda a: [a.don, a.file], default=lambda a: Path(a.don) / "pictures"))

    p = sub.add_parser("keypoints", help="choose reference keypoints on a first frame of the demonstrations")
    p.add_argument("--don", default=None, help="a DON run folder (`dckp pretrain --out`); without one, references "
                   "for ground-truth keypoints (gt-kp) alone (default: none)")
    p.add_argument("--demos", required=True, help="a demonstrations file from `dckp collect`, or a views file "
                   "(`dckp import`)")
    p.add_argument("--out", required=True, help="references file (.safetensors)")
    p.add_argument("--episode", default=None, help="the first episode considered: per camera, the first of the 10 "
                   "from it with the object count most of them show, or it alone with --pixels (default: the first)")
    p.add_argument("--frame", type=int, default=0, help="the reference frame's index in the episode (default: 0)")
    p.add_argument("--workspace-min", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="world box for the reference masks, low corner (metres) (default: the file's box)")
    p.add_argument("--workspace-max", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="world box, high corner (metres) (default: the file's box)")
    p.add_argument("--per-camera", type=int, default=16, help="references per camera, equal per object (default: 16)")
    p.add_argument("--pixels", nargs="+", default=None, metavar="CAMERA=FILE.json",
                   help='hand-picked pixels per camera instead: JSON {"uv": [[u, v], ...]} (default: none)')
    p.add_argument("--seed", type=int, default=0, help="seed of the reference sampling (default: 0)")
    p.add_argument("--device", default="cpu", help="where the DON runs: cpu, cuda or cuda:N (default: cpu)")
    p.set_defaults(func=cmd_keypoints)
    _writes(p, Write(inputs=lambda a: [a.don, a.demos, *(p.split("=", 1)[-1] for p in a.pixels or [])]))

    p = sub.add_parser("train-policy", help="train a policy head and its encoder (frozen or end to end) on "
                       "demonstrations",
                       configs=[("dckp.encoders.config", "EncoderConfig", None),
                                ("dckp.encoders.config", "add_option_args", None),
                                ("dckp.policy.config", "add_policy_args", None)])
    p.add_argument("--demos", required=True, help="a demonstrations file from `dckp collect`")
    p.add_argument("--out", required=True, help="policy folder")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper", "converged"],
                   help="the settings every flag below starts from: the paper's protocol (cpu, paper) or robomimic's "
                   "BC-RNN-GMM recipe with validation rollouts (converged) (default: cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's default)")
    p.set_defaults(func=cmd_train_policy)
    _writes(p, Write(kind="folder", resumes=True, inputs=lambda a: [a.demos, a.references, a.don, a.representation]))

    p = sub.add_parser("evaluate", help="closed-loop success rate of a policy folder, with rollout videos",
                       configs=[("dckp.evaluation.config", "EvalConfig", None)])
    p.add_argument("policy", help="a `dckp train-policy` folder")
    p.add_argument("--out", default=None, help="folder for eval.json and videos (default: POLICY/eval)")
    p.set_defaults(func=cmd_evaluate)
    _writes(p, Write(kind="folder", resumes=True, inputs=lambda a: [a.policy],
                     default=lambda a: Path(a.policy) / "eval"))

    p = sub.add_parser("show", help="summarise a dataset and write a picture grid and a video of an episode")
    p.add_argument("file", help="a demos or views file")
    p.add_argument("--episode", default=None, help="episode name (default: the first)")
    p.add_argument("--out", default=None, help="folder for the pictures (default: FILE_show beside the file)")
    p.set_defaults(func=cmd_show)
    _writes(p, Write(kind="folder", inputs=lambda a: [a.file], default=_show_default))

    p = sub.add_parser("view", help="a 3D rerun recording (.rrd) of a views or demos file, or of a policy's rollout",
                       configs=[("dckp.viz.view", "ViewConfig", None)])
    p.add_argument("file", help="a views or demos file, or a policy folder (one rollout, re-run in the simulator)")
    p.add_argument("--out", default=None, help="the .rrd file (default: FILE.rrd, or POLICY/rollout_SEED.rrd)")
    p.set_defaults(func=cmd_view)
    _writes(p, Write(inputs=lambda a: [a.file], default=_view_default))

    p = sub.add_parser("export", help="a dckp file in another layout: demonstrations as robomimic's HDF5, or "
                       "frames as RGB-D recordings (plain folder or TUM), one sequence folder per episode",
                       configs=[("dckp.io.config", "ExportConfig", None)])
    p.add_argument("file", help="a demos file (robomimic), or a views or demos file (folder, tum)")
    p.add_argument("--out", required=True, help="the .hdf5 file (robomimic), or the folder for the sequence "
                   "folders (folder, tum)")
    p.set_defaults(func=cmd_export)
    _writes(p, Write(kind=_export_kind, inputs=lambda a: [a.file]))

    p = sub.add_parser("pick-references", help="choose reference keypoints by hand on a frame: a matplotlib "
                       "window, or an HTML page without a display; writes the files `dckp keypoints --pixels` reads",
                       configs=[("dckp.viz.picker", "PickConfig", None)])
    p.add_argument("file", help="a demos file, or a views file (`dckp import`)")
    p.add_argument("--out", required=True, help="folder for CAMERA.json per camera (and pick.html without a display)")
    p.set_defaults(func=cmd_pick_references)
    _writes(p, Write(kind="folder", inputs=lambda a: [a.file]))

    p = sub.add_parser("run", help="the whole pipeline for one task, skipping finished stages; ends in report.html",
                       configs=[("dckp.pipeline", "RunConfig", "RUN_PRESETS")])
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper", "demo"],
                   help="the settings every flag below starts from (default: cpu)")
    p.add_argument("--out", default=None, help="run folder (default: runs/TASK)")
    p.set_defaults(func=cmd_run)
    _writes(p, Write(kind="folder", resumes=True, default=lambda a: f"runs/{_run_task(a)}"))

    p = sub.add_parser("table", help="Table I: every (task, method) cell trained and evaluated on Ray, skipping "
                       "finished stages; writes results/table1.{json,md,png,html}",
                       configs=[("dckp.table.config", "add_table_args", None)])
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper", "demo"],
                   help="the stage settings every RunConfig flag below starts from (default: cpu)")
    p.add_argument("--out", default="runs/table", help="run folder: one `dckp run` folder per task (default: "
                   "runs/table)")
    p.set_defaults(func=cmd_table)
    dry = {"skip": lambda a: bool(a.dry_run)}
    _writes(p, Write(kind="folder", resumes=True, **dry), Write("results", kind="folder", resumes=True, **dry,
                                                                default=lambda a: _value(a, "results",
                                                                                         _table_config())))
    return parser


class _Parser(argparse.ArgumentParser):
    """A subcommand's config flags are added when that subcommand is parsed or asked for help: their dataclasses
    (or functions, such as the encoder registry's options) may import torch, so `dckp --help` and `dckp tasks`
    start without it. Errors are one line."""

    def __init__(self, *args, configs: list[tuple[str, str, str | None]] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self._configs = list(configs)  # (module, dataclass, presets dict or None)

    def _add_configs(self) -> None:
        while self._configs:
            module, name, presets = self._configs.pop(0)
            mod = importlib.import_module(module)
            obj = getattr(mod, name)
            if isinstance(obj, type):  # a config dataclass
                add_config_args(self, obj, getattr(mod, presets) if presets else None)
            else:  # a function that adds flags
                obj(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_configs()
        return super().parse_known_args(None if args is None else bare_switches(self, list(args)), namespace)

    def format_help(self) -> str:
        self._add_configs()
        return super().format_help()

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (argparse printed it)
        return int(e.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    created = _new_folders(args)
    args.argv = argv
    received: list[int] = []
    try:
        if getattr(args, "device", None) and args.command != "table":  # a table's Ray nodes have their own devices
            check_device_here(args.device, "--device")
        with signals_as_interrupt(received), contextlib.ExitStack() as outputs:
            for write in getattr(args, "writes", ()):
                if not write.skip(args):
                    outputs.enter_context(write.lock(args))
            status = args.func(args)
    except BaseException as e:
        _remove_empty(created)
        if isinstance(e, DckpError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, KeyboardInterrupt) or received:  # after a stop signal, any error is its doing (one inside
            # an import or a C extension comes out as another error: ImportError, SystemError)
            kept = (str(e) if isinstance(e, KeyboardInterrupt) else "") or \
                "nothing half-written was kept (outputs are renamed into place when complete)"
            again = "resume with" if isinstance(e, Interrupted) else "run again with"
            if any(w.resumes for w in getattr(args, "writes", ())):  # --force would start over
                argv = [a for a in argv if a != "--force"]
            print(f"interrupted: {kept}; {again}: dckp {shlex.join(argv)}", file=sys.stderr)
            return 128 + (received[-1] if received else signal.SIGINT)
        raise
    return status or 0


@contextlib.contextmanager
def signals_as_interrupt(received: list[int]):
    """SIGTERM and SIGHUP (what `timeout`, Slurm, Ray and a closed terminal send) are handled as Ctrl-C is: by
    whatever SIGINT handler is in place when they come (a training's handler saves its step first), else by raising
    KeyboardInterrupt; each signal's number, Ctrl-C's too, is appended to `received`. A signal ignored when the
    command starts stays ignored (`nohup` ignores SIGHUP, so that closing the terminal does not stop the command).
    Outside the main thread, signals stay as they are."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_interrupt(signum, frame):
        received.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if signum != signal.SIGINT and callable(handler) and handler is not as_interrupt:
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, as_interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(s) is not signal.SIG_IGN}
    # a process started with them blocked (the mask is inherited) would otherwise never see them
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _new_folders(args) -> list[Path]:
    """The folders that the outputs (a folder, or a file's folder) will create, deepest first."""
    new = []
    for write in getattr(args, "writes", ()):
        if getattr(args, write.field, None) is None or write.in_place:
            continue
        folder = Path(getattr(args, write.field)).absolute()
        folder = folder.parent if (write.kind(args) if callable(write.kind) else write.kind) == "file" else folder
        while not folder.exists() and folder not in new:
            new.append(folder)
            folder = folder.parent
    return new


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed command created, while they are empty (deepest first)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (something was written) or never created
            if folder.exists():
                return


if __name__ == "__main__":
    sys.exit(main())
