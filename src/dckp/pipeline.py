"""`dckp run`: the whole method for one task, each finished stage checked and skipped, ending in report.html.

Stages (folder layout under `out`): demonstrations `demos.h5`, pretraining views `views.h5` (fused masks),
held-out views `heldout.h5`, the Dense Object Net `don/`, its correspondence accuracy on the held-out views
`heldout_correspondence.json`, reference keypoints `references.safetensors`, one policy per encoder
`policy_<encoder>/` (the run's encoder and its baselines, e.g. `gt-kp`, trained on the same demonstrations with
the same references and steps) and its closed-loop evaluation `policy_<encoder>/eval/` (same seeds for every
encoder), pictures in `pictures/`, the DON keypoints' error on the demonstrations' frames `keypoint_error.json`
(`dckp eval-keypoints`), `stage_seconds.json` and `report.html`, one self-contained page.

A stage is skipped only when its artefact exists, reads back and was made with the settings asked for now (the
stage's saved config), and none of the stages it depends on runs again. Which stages run is decided first, and
their artefacts are removed before any work starts, so an interrupted run never leaves a stage that looks finished
but was made from inputs that have since changed. The DON and the policies resume from their last checkpoint unless
their inputs changed.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dckp.config import atomic_write_bytes, check_device, option, save_json
from dckp.encoders.config import encoder_names
from dckp.errors import DckpError, Interrupted
from dckp.sim.tasks import TASKS

log = logging.getLogger(__name__)

HELDOUT_SEED = 200_000  # held-out scene seeds (demonstrations from 0, pretraining views 100000, evaluation 1000000)
HELDOUT_PAIRS = 100  # evaluation pairs per pair type (at 20, one DON scored 0.76 and 0.85 same camera)
# robomimic trains its ResNet visual core on windows of 10 steps (BC-RNN), which also keeps one run on 2 CPU cores
# within an hour (results/policy.json's resnet-ssm row was measured so)
POLICY_OVERRIDES = {"resnet-ssm": {"seq_len": 10}}  # head options, for the heads that have them
REPORT_VIDEOS = 3


@dataclass
class RunConfig:
    """The whole method for one task: the stages take their other settings from the `cpu` stage presets (`paper`
    for the paper preset) and these fields replace theirs. Only the stages that the encoders need run: the DON
    stages (views, masks, held-out views, pretraining, its correspondence accuracy, pictures) for an encoder built
    on a DON, reference keypoints for a keypoint encoder (chosen on the object masks alone without a DON)."""

    task: str = option("lift", "simulated task (see `dckp tasks`)", choices=TASKS)
    demos: int = option(0, "successful demonstrations (0: the task's number, see `dckp tasks`: the stage preset's; "
                        "the paper's for the converged protocol)")
    scenes: int = option(20, "pretraining view scenes")
    arm_only: int = option(2, "pretraining sequences with every object removed (the arm as its own object)")
    heldout_scenes: int = option(2, "held-out view scenes for the DON's correspondence accuracy")
    image_size: int = option(128, "camera image height and width in pixels, in every stage")
    don_steps: int = option(0, "DON optimiser steps (0: the DON preset's, see `dckp pretrain --help`)")
    representation_steps: int = option(0, "optimiser steps of each pretrained representation (bvae, transporter, "
                                       "monet; 0: the method preset's, see `dckp pretrain-representation --help`)")
    encoder: str = option("dckp-3d", "the policy's observation encoder", choices=encoder_names)
    baselines: list[str] = option(["gt-kp"], "more encoders trained and evaluated the same way, as reference rows",
                                  choices=encoder_names)
    protocol: str = option("paper", "policy training: the paper's (lstm head, 1000-1500 steps, the last "
                           "checkpoint) or converged (`dckp train-policy --preset converged`: rnn-gmm, windows, "
                           "the best checkpoint on validation rollouts)", choices=("paper", "converged"))
    head: str = option("", "policy head ('': the protocol's; see `dckp train-policy --help`)")
    noise: float = option(-1.0, "DART noise of the demonstrations (`dckp collect --noise`; -1: the protocol's: none "
                          "for paper, the task's converged-noise for converged, see `dckp tasks`)")
    policy_steps: int = option(0, "policy Adam steps (0: the protocol's: 1000 for one-camera tasks, 1500 for the "
                               "two-camera multi-object ones; converged: its preset's)")
    episodes: int = option(50, "closed-loop evaluation episodes per encoder (the same seeds for each)")
    workers: int = option(2, "worker processes running the expert's demonstrations and the evaluation episodes")
    max_steps: int = option(0, "most control steps per evaluation episode (0: the task's horizon)")
    seed: int = option(0, "seed of the demonstrations, DON, references and policies")
    device: str = option("cpu", "torch device of the DON, representation and policy training, demonstration "
                         "encoding and evaluation's policy: cpu, cuda or cuda:N (the simulator stays on the CPU)")
    don_workers: int = option(0, "DataLoader processes drawing the DON's pairs beside its training (0: in the "
                              "training process; the same pairs either way; a GPU wants several)")
    max_train_hours: float = option(0.0, "stop a policy training whose first steps project it over this many "
                                    "hours, keeping its state to resume (0: no limit; `dckp table` gives it "
                                    "--max-cell-hours)")

    def __post_init__(self):
        from dckp.sim.tasks import get_task

        get_task(self.task)
        names = encoder_names()
        for name in (self.encoder, *self.baselines):
            if name not in names:
                raise DckpError(f"unknown encoder {name!r}; choose from {names}",
                                field="encoder" if name == self.encoder else "baselines")
        for name in ("scenes", "heldout_scenes", "episodes", "workers"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)
        for name in ("max_steps", "don_workers", "max_train_hours"):
            if getattr(self, name) < 0:
                raise DckpError(f"must be >= 0, got {getattr(self, name)}", field=name)
        check_device(self.device)
        if self.protocol not in ("paper", "converged"):
            raise DckpError(f"must be paper or converged, got {self.protocol!r}", field="protocol")
        if not (self.noise == -1 or 0 <= self.noise <= 1):
            raise DckpError(f"must be in [0, 1], or -1 for the protocol's, got {self.noise}", field="noise")

    def demo_count(self, sp: str) -> int:
        """`demos` as the demonstrations stage stores it (0: the stage preset `sp`'s number). Under the converged
        protocol 0 means the task's paper number (140 on stack and the multi-object tasks), which the learner
        benchmark chose its recipe with; where that is the preset's number too, it stays 0."""
        from dckp.sim.tasks import get_task

        task = get_task(self.task)
        if self.demos or self.protocol != "converged" or task.demos["paper"] == task.demos[sp]:
            return self.demos
        return task.demos["paper"]

    def demo_noise(self) -> float:
        """The DART noise the demonstrations are collected with: `noise`, or the protocol's."""
        from dckp.sim.tasks import get_task

        if self.noise >= 0:
            return self.noise
        return get_task(self.task).dart_noise if self.protocol == "converged" else 0.0

    def demo_noise_phases(self) -> str:
        """Where that noise acts (`CollectConfig.noise_phases`): the task's `dart_phases` under the converged
        protocol."""
        from dckp.sim.tasks import get_task

        return get_task(self.task).dart_phases if self.protocol == "converged" else "all"

    def encoders(self) -> list[str]:
        """The run's encoder, then its baselines."""
        return [self.encoder] + [b for b in dict.fromkeys(self.baselines) if b != self.encoder]

    def variant(self) -> str:
        """'' for the paper's protocol with its head; else the protocol, and the head where one is named: the
        suffix of the policies' folders and stages, so that the protocols' policies live side by side in a run."""
        if self.protocol == "paper" and self.head in ("", "lstm"):
            return ""
        return self.protocol + (f"-{self.head}" if self.head else "")

    def policy_folder(self, encoder: str) -> str:
        """An encoder's policy folder in the run folder: `policy_<encoder>[_<variant>]`."""
        return f"policy_{encoder}" + (f"_{self.variant()}" if self.variant() else "")

    def stage(self, kind: str, encoder: str) -> str:
        """The name of an encoder's `policy` or `evaluate` stage: `<kind> <encoder>[ <variant>]`."""
        return f"{kind} {encoder}" + (f" {self.variant()}" if self.variant() else "")


RUN_PRESETS = {
    "cpu": RunConfig(),
    "paper": RunConfig(scenes=40, arm_only=8, image_size=256, episodes=200),
    # make demo: the smallest useful setting, well under 15 minutes on 2 CPU cores; 40 episodes keep the 95 % interval
    # of a success rate within about +-0.15, and the blind row shows what proprioception alone achieves (with a
    # 600-step DON the keypoint policy scored 24 of 40, hardly above blind's 21)
    "demo": RunConfig(task="lift", demos=10, scenes=4, arm_only=1, don_steps=1500, policy_steps=600, episodes=40,
                      baselines=["gt-kp", "blind"]),
}


def policy_settings(cfg: RunConfig, sp: str):
    """The `PolicyConfig` a run trains its policies with (before per-encoder overrides): the protocol's preset
    (`sp`, the stage preset, for the paper's; `converged`), the run's seed, device and steps, and its head."""
    from dckp.config import preset
    from dckp.policy.config import POLICY_PRESETS, default_steps
    from dckp.sim.tasks import get_task

    policy_preset = sp if cfg.protocol == "paper" else "converged"
    policy_cfg = dataclasses.replace(preset(POLICY_PRESETS, policy_preset), seed=cfg.seed, device=cfg.device,
                                     steps=cfg.policy_steps or default_steps(len(get_task(cfg.task).cameras),
                                                                             cfg.task, policy_preset))
    if cfg.head and cfg.head != policy_cfg.head:
        policy_cfg = dataclasses.replace(policy_cfg, head=cfg.head, head_options={})
    return policy_cfg


@dataclass
class Stage:
    name: str
    artefact: Path
    work: Callable[[], object]
    check: Callable[[], object]  # raises DckpError when the artefact is unusable or made with other settings
    needs: tuple[str, ...] = ()
    partial: Path | None = None  # resumable state: kept on interrupt, removed when the stage's inputs changed
    evaluation: dict | None = None  # an evaluate stage's `evaluate_policy` arguments, so a runner can split its seeds

    def resumes(self) -> bool:
        """Whether an interrupted run left state that the stage's work continues from."""
        return self.partial is not None and self.partial.exists()

    def start_piece(self) -> Callable[[], float | None]:
        """Begin a piece of the stage's work; return a function giving the stage's seconds so far: this piece's,
        plus those earlier pieces spent on the state it continues from (each from its start to the last checkpoint
        it saved, `partial`'s modification time, as each piece recorded in `<partial stem>.clock.json` when it
        began). None when a piece left no record (made before this record existed): the stage's time is unknown."""
        start, before = time.time(), 0.0
        if self.partial is not None:
            clock = self.partial.with_name(self.partial.stem + ".clock.json")
            if self.partial.exists():
                try:
                    last = json.loads(clock.read_text())
                    before = last["before"] + max(0.0, self.partial.stat().st_mtime - last["started"])
                except (OSError, ValueError, KeyError, TypeError):  # no record, or a record of unknown time
                    before = None
            clock.parent.mkdir(parents=True, exist_ok=True)
            save_json({"started": start, "before": before}, clock)
        return lambda: None if before is None else round(before + time.time() - start, 1)


def run(cfg: RunConfig, out: str | Path, preset: str = "cpu") -> Path:
    """Run every stage that is not done (with the `paper` stage presets for `preset="paper"`, else `cpu`);
    `preset` is the run preset's name (cpu, paper, demo), recorded in run.config.json. Returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_json({"preset": preset, **dataclasses.asdict(cfg)}, out / "run.config.json")
    stages = plan(cfg, out, "paper" if preset == "paper" else "cpu")
    timings_path = out / "stage_seconds.json"
    timings = _read_json(timings_path) if timings_path.exists() else {}
    todo = decide(stages)
    for i, stage in enumerate(stages):
        if stage.name not in todo:
            log.info("%s: done, skipped", stage.name)
            continue
        try:  # an interrupt from the moment the stage is announced names it
            log.info("%s: running", stage.name)
            seconds = stage.start_piece()  # with an interrupted run's time on the state it resumes from
            stage.work()
        except KeyboardInterrupt as e:  # the CLI adds the command that resumes
            saved = str(e) or (f"kept {stage.partial}, which the stage resumes from" if stage.resumes() else "")
            raise Interrupted(f"stage {stage.name!r} stopped{f' ({saved})' if saved else ''}; finished stages kept in "
                              f"{out}: {', '.join(s.name for s in stages[:i]) or 'none'}") from None
        timings[stage.name] = seconds()
        save_json(timings, timings_path)
    return write_report(out)


def decide(stages: list[Stage], remove: bool = True) -> dict[str, str]:
    """The stages that must run, each with why (`""` when its artefact is missing): decided before any work, and
    (`remove`) their artefacts removed now, so an interrupt leaves no stage that looks finished but was made from
    inputs that have since changed."""
    todo: dict[str, str] = {}
    for stage in stages:
        changed = [n for n in stage.needs if n in todo]
        reason = f"it needs {', '.join(changed)}, which run again" if changed else _problem(stage)
        if reason is None:
            continue
        todo[stage.name] = reason
        if not remove:
            continue
        if stage.artefact.exists():  # removed now: a later run must not take it for finished
            log.warning("%s: %s; running the stage again", stage.name, reason)
            stage.artefact.unlink()
        if changed and stage.partial is not None:
            stage.partial.unlink(missing_ok=True)
    return todo


def _problem(stage: Stage) -> str | None:
    """None when the stage's artefact is there and good; "" when it is missing; else what is wrong with it."""
    if not stage.artefact.exists():
        return ""
    try:
        stage.check()
    except DckpError as e:
        return str(e)
    return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DckpError("file not found", path=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DckpError(f"invalid JSON ({e})".replace("\n", " "), path=str(path)) from None


def _flat(d: dict, prefix: str = "") -> dict:
    return {k2: v2 for k, v in d.items()
            for k2, v2 in (_flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(prefix + k, v)])}


def check_config(path: Path, expected: dict, ignore: tuple[str, ...] = (), added: dict | None = None) -> None:
    """DckpError unless the JSON config at `path` equals `expected` (nested keys as `a.b`) outside `ignore`. `added`:
    settings added since configs were saved without them, with the value that made what those configs describe."""
    saved, now = {**(added or {}), **_flat(_read_json(path))}, _flat(json.loads(json.dumps(expected)))
    differ = sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k))
    if differ:
        changes = ", ".join(f"{k} {saved.get(k)!r} (now {now.get(k)!r})" for k in differ)
        raise DckpError(f"made with other settings: {changes}", path=str(path))


def check_metrics(path: Path) -> dict:
    """The scores at `path`, after checking that they were made with today's definitions (`dckp.metrics.VERSION`,
    which they record as `metrics`); DckpError otherwise."""
    from dckp.metrics import VERSION

    saved = _read_json(path)
    if saved.get("metrics") != VERSION:
        raise DckpError(f"scored with metrics version {saved.get('metrics')}, now {VERSION}", path=str(path),
                        field="metrics")
    return saved


def check_dataset(path: Path, kind: str, task: str) -> None:
    """DckpError unless `path` is a readable, valid `kind` file of `task`: checked on every start of a run, on files
    the run wrote whole (or adopted from another), so each stream is read up to its first frame with depth."""
    from dckp.data import Dataset

    with Dataset(path) as ds:
        if (ds.kind, ds.task) != (kind, task):
            raise DckpError(f"a {ds.kind} file of task {ds.task}, expected {kind} of {task}", path=str(path))
        if not ds.episodes:
            raise DckpError("no episodes", path=str(path), field="data")
        ds.validate(every_frame=False)


def check_files(*paths: Path) -> None:
    for p in paths:
        if not p.is_file() or p.stat().st_size == 0:
            raise DckpError("missing or empty", path=str(p))


def plan(cfg: RunConfig, out: Path, sp: str) -> list[Stage]:
    """The stages of a run, in order; `sp` is the stage preset (cpu or paper)."""
    from dckp.config import preset
    from dckp.don.config import DON_PRESETS
    from dckp.encoders.base import encoder_class
    from dckp.encoders.config import EncoderConfig
    from dckp.evaluation.rollout import EVAL_SEED_START
    from dckp.geometry.masks import MASK_PRESETS
    from dckp.metrics import VERSION as METRICS_VERSION
    from dckp.sim.config import COLLECT_ADDED, COLLECT_PRESETS, RENDER, VIEWS_ADDED, VIEWS_PRESETS
    from dckp.sim.tasks import get_task

    task = get_task(cfg.task)
    demos, views, heldout = out / "demos.h5", out / "views.h5", out / "heldout.h5"
    don, refs, pictures = out / "don", out / "references.safetensors", out / "pictures"
    errors = out / "keypoint_error.json"
    collect_cfg = dataclasses.replace(preset(COLLECT_PRESETS, sp), task=cfg.task, demos=cfg.demo_count(sp),
                                      image_size=cfg.image_size, seed=cfg.seed, workers=cfg.workers,
                                      noise=cfg.demo_noise(), noise_phases=cfg.demo_noise_phases())
    # demonstrations another protocol's policies were trained on (its noise or its number) are never replaced
    if demos.exists() and _config_path(demos).exists():
        made = _read_json(_config_path(demos))
        noise, count = made.get("noise", COLLECT_ADDED["noise"]), made.get("demos", 0) or task.demos[sp]
        phases = made.get("noise_phases", COLLECT_ADDED["noise_phases"])
        if noise and collect_cfg.noise and phases != collect_cfg.noise_phases:
            raise DckpError(f"collected with DART noise_phases {phases}, this run's is "
                            f"{collect_cfg.noise_phases} (the {cfg.protocol} protocol's for {cfg.task}); give another "
                            "--out for the new demonstrations (dckp.table.adopt copies the views and DON there)",
                            path=str(demos))
        if noise != collect_cfg.noise:
            why = f"--noise {cfg.noise:g}" if cfg.noise >= 0 else f"the {cfg.protocol} protocol's for {cfg.task}"
            raise DckpError(f"collected with DART noise {noise}, this run's is {collect_cfg.noise} ({why}); give "
                            f"--noise {noise}, or another --out for the new demonstrations (dckp.table.adopt copies "
                            "the views and DON there)", path=str(demos))
        if not cfg.demos and count != (want := collect_cfg.demos or task.demos[sp]):
            raise DckpError(f"{count} demonstrations, the {cfg.protocol} protocol's for {cfg.task} are "
                            f"{want}; give --demos {count}, or another --out for the new demonstrations "
                            "(dckp.table.adopt copies the views and DON there)", path=str(demos))
    views_cfg = dataclasses.replace(preset(VIEWS_PRESETS, sp), task=cfg.task, scenes=cfg.scenes,
                                    arm_only=cfg.arm_only, image_size=cfg.image_size)
    # the held-out scenes stay those every DON so far was scored on: no approach
    heldout_cfg = dataclasses.replace(views_cfg, scenes=cfg.heldout_scenes, arm_only=0, seed=HELDOUT_SEED,
                                      approach=False)
    lo, hi = task.workspace
    mask_cfg = dataclasses.replace(preset(MASK_PRESETS, sp), workspace_min=list(lo), workspace_max=list(hi))
    don_cfg = dataclasses.replace(preset(DON_PRESETS, sp), image_size=cfg.image_size, seed=cfg.seed, device=cfg.device,
                                  workers=cfg.don_workers,
                                  **({"steps": cfg.don_steps} if cfg.don_steps else {}))
    policy_cfg = policy_settings(cfg, sp)
    head_fields = {f.name for f in dataclasses.fields(policy_cfg.options())}

    def policy_config(name: str):
        over = {k: v for k, v in POLICY_OVERRIDES.get(name, {}).items() if k in head_fields}
        return dataclasses.replace(policy_cfg, head_options={**policy_cfg.head_options, **over})

    def collected_config(stage_cfg) -> dict:
        """A file's stage config: its settings and what the cameras draw (images rendered otherwise are made again)."""
        return {"preset": sp, "render": RENDER, **dataclasses.asdict(stage_cfg)}

    def collect(stage_cfg, path: Path, kind: str):
        from dckp.sim.collect import collect_demos, collect_views

        if kind == "demos":
            collect_demos(stage_cfg, str(path), preset=sp)
        else:
            collect_views(stage_cfg, str(path))
        save_json(collected_config(stage_cfg), _config_path(path))

    def collected(stage_cfg, path: Path, kind: str):
        check_dataset(path, kind, cfg.task)
        check_config(_config_path(path), collected_config(stage_cfg), ignore=("workers",),
                     added=COLLECT_ADDED if kind == "demos" else VIEWS_ADDED)

    def fuse():
        from dckp.geometry.fuse import fuse_file
        from dckp.viz.fuse import fuse_picture

        fuse_file(views, mask_cfg)
        save_json({"preset": sp, **dataclasses.asdict(mask_cfg)}, out / "views.fuse.config.json")
        fuse_picture(views, out / "views_masks.png")

    def fused():
        check_config(out / "views.fuse.config.json", {"preset": sp, **dataclasses.asdict(mask_cfg)})
        check_files(out / "views_masks.png")

    def pretrain():
        from dckp.don.train import pretrain

        pretrain([str(views)], don_cfg, don)

    def pretrained():
        from dckp.don.checkpoint import load_checkpoint_config

        saved = dataclasses.asdict(load_checkpoint_config(don / "don.safetensors"))
        differ = sorted(k for k, v in dataclasses.asdict(don_cfg).items()
                        if saved[k] != v and k not in ("device", "workers", "compile"))  # where and how it ran
        if differ:
            raise DckpError(f"made with other settings: {', '.join(f'{k} {saved[k]!r}' for k in differ)}",
                            path=str(don / "don.safetensors"))

    def correspondence():
        from dckp.don.evaluate import evaluate_model, sample_eval_pairs
        from dckp.don.train import load_don

        pairs = sample_eval_pairs(str(heldout), per_type=HELDOUT_PAIRS, seed=0)
        results = evaluate_model(load_don(don).to(cfg.device), str(heldout), pairs)
        save_json({"views": heldout.name, "pairs_per_type": HELDOUT_PAIRS, "metrics": METRICS_VERSION,
                   "results": results}, out / "heldout_correspondence.json")

    def correspondence_done():
        path = out / "heldout_correspondence.json"
        saved = check_metrics(path)
        if "results" not in saved:
            raise DckpError("missing field", path=str(path), field="results")
        if saved.get("pairs_per_type") != HELDOUT_PAIRS:
            raise DckpError(f"scored on {saved.get('pairs_per_type')} pairs per type, now {HELDOUT_PAIRS}",
                            path=str(path), field="pairs_per_type")

    classes = {name: encoder_class(name) for name in cfg.encoders()}
    need_don = any("don" in c.artefacts for c in classes.values())
    need_refs = any("references" in c.artefacts for c in classes.values())
    representations = [n for n, c in classes.items() if "representation" in c.artefacts]
    need_views = need_don or bool(representations)

    def needs(name: str) -> tuple[str, ...]:
        """The stages that make an encoder's inputs: the demonstrations and its artefacts."""
        return ("demonstrations", *({"don": "pretrain", "references": "references",
                                     "representation": f"representation {name}"}[a] for a in classes[name].artefacts))

    def representation_cfg(method: str):
        from dckp.representations.config import method_presets

        size = max(16, cfg.image_size // 2 // 16 * 16)  # half the camera resolution, as the authors
        return dataclasses.replace(preset(method_presets(method), sp), image_size=size, seed=cfg.seed,
                                   device=cfg.device,
                                   **({"steps": cfg.representation_steps} if cfg.representation_steps else {}))

    def representation_files(method: str) -> list[str]:
        from dckp.representations.train import method_module

        return [str(demos if method_module(method).PAIRS else views)]

    def pretrain_representation(method: str):
        from dckp.representations.train import pretrain_representation

        pretrain_representation(method, representation_files(method), representation_cfg(method),
                                out / f"representation_{method}")

    def representation_done(method: str):
        from dckp.representations.train import load_representation

        folder = out / f"representation_{method}"
        saved_method, saved, _ = load_representation(folder)
        if saved_method != method or dataclasses.replace(saved, device=cfg.device) != representation_cfg(method):
            raise DckpError("made with other settings", path=str(folder))

    def references():
        from dckp.don.train import load_don
        from dckp.keypoints.select import select_references

        select_references(load_don(don).to(cfg.device) if need_don else None, demos, refs, seed=cfg.seed)

    def references_done():
        from dckp.keypoints.select import load_references

        chosen, meta = load_references(refs)
        if meta.get("task") != cfg.task:
            raise DckpError(f"references of task {meta.get('task')!r}, expected {cfg.task!r}", path=str(refs))
        if need_don and any(r["descriptors"].shape[-1] == 0 for r in chosen.values()):  # chosen for gt-kp alone
            raise DckpError("chosen without a DON (no descriptors), which the DON encoders need", path=str(refs))

    def encoder_cfg(name: str) -> EncoderConfig:
        artefacts = classes[name].artefacts
        return EncoderConfig(encoder=name, don=str(don) if "don" in artefacts else "",
                             references=str(refs) if "references" in artefacts else "",
                             representation=str(out / f"representation_{name}") if "representation" in artefacts
                             else "")

    def train(name: str):
        from dckp.learn import train_on_demos

        enc, folder = encoder_cfg(name), out / cfg.policy_folder(name)
        save_json({"encoder": dataclasses.asdict(enc), "policy": dataclasses.asdict(policy_config(name))},
                  folder / "train_policy.config.json")
        train_on_demos(demos, enc.spec(), policy_config(name), folder, budget_s=cfg.max_train_hours * 3600)

    def trained(name: str):
        from dckp.policy import load_policy, load_run

        folder = out / cfg.policy_folder(name)
        load_policy(folder)
        load_run(folder)
        check_config(folder / "train_policy.config.json",
                     {"encoder": dataclasses.asdict(encoder_cfg(name)),
                      "policy": dataclasses.asdict(policy_config(name))},
                     ignore=("encoder.don", "encoder.references", "encoder.representation",  # the folder layout
                             "policy.device", "policy.compile"))  # where and how it ran

    def evaluation(name: str) -> dict:
        return {"policy_dir": out / cfg.policy_folder(name), "episodes": cfg.episodes, "seed_start": EVAL_SEED_START,
                "videos": REPORT_VIDEOS if name == cfg.encoder else 0, "max_steps": cfg.max_steps or None,
                "device": cfg.device}

    def evaluate(name: str):
        from dckp.evaluation import evaluate_policy

        evaluate_policy(workers=cfg.workers, **evaluation(name))

    def evaluated(name: str):
        folder = out / cfg.policy_folder(name) / "eval"
        ev = _read_json(folder / "eval.json")
        if ev.get("seeds") != list(range(EVAL_SEED_START, EVAL_SEED_START + cfg.episodes)):
            from dckp.evaluation import keep_episodes

            # an older record's episodes: the evaluation grows from them
            keep_episodes(folder, out / cfg.policy_folder(name))
            raise DckpError(f"evaluated on other seeds ({len(ev.get('seeds') or [])} episodes, now {cfg.episodes}; "
                            "the episodes recorded are kept)",
                            path=str(folder / "eval.json"), field="seeds")
        if ev.get("horizon") != (cfg.max_steps or task.horizon):
            raise DckpError(f"episodes of {ev.get('horizon')} steps, now {cfg.max_steps or task.horizon}",
                            path=str(folder / "eval.json"), field="horizon")
        check_files(*(folder / v for v in ev.get("videos", [])))

    def describe():
        from dckp.don.train import load_don
        from dckp.viz.descriptors import descriptor_pictures

        descriptor_pictures(load_don(don), demos, pictures)

    def keypoint_config():
        """The DON's mode (dckp-3d's keypoints), and the trackers among the run's encoders."""
        from dckp.evaluation.keypoint_error_config import KeypointErrorConfig

        trackers = [m for m, name in (("gate", "dckp-gate"), ("filter", "dckp-filter")) if name in classes]
        return KeypointErrorConfig(don=str(don), references=str(refs), demos=str(demos), methods=["mode", *trackers])

    def keypoint_error():
        from dckp.evaluation.keypoint_error import keypoint_error

        save_json(keypoint_error(keypoint_config()), errors)
        save_json(dataclasses.asdict(keypoint_config()), _config_path(errors))

    def keypoint_error_done():
        """Done when measured with today's settings for at least the run's methods: a run with fewer dckp encoders
        keeps the trackers' errors that an earlier run measured."""
        wanted = keypoint_config()
        check_config(_config_path(errors), dataclasses.asdict(wanted),
                     ignore=("don", "references", "demos", "methods"))  # the folder layout; methods below
        missing = [m for m in wanted.methods if m not in _read_json(_config_path(errors)).get("methods", [])]
        if missing:
            raise DckpError(f"no error measured for methods {missing}", path=str(_config_path(errors)), field="methods")
        check_metrics(errors)

    stages = [Stage("demonstrations", demos, lambda: collect(collect_cfg, demos, "demos"),
                    lambda: collected(collect_cfg, demos, "demos"))]
    if need_views:
        stages.append(Stage("views", views, lambda: collect(views_cfg, views, "views"),
                            lambda: collected(views_cfg, views, "views")))
    if need_don:
        stages += [
            Stage("masks", out / "views.fuse.config.json", fuse, fused, needs=("views",)),
            Stage("held-out views", heldout, lambda: collect(heldout_cfg, heldout, "views"),
                  lambda: collected(heldout_cfg, heldout, "views")),
            Stage("pretrain", don / "don.safetensors", pretrain, pretrained, needs=("masks",),
                  partial=don / "last.safetensors"),
            Stage("held-out correspondence", out / "heldout_correspondence.json", correspondence,
                  correspondence_done, needs=("pretrain", "held-out views")),
        ]
    for method in representations:
        folder = out / f"representation_{method}"
        stages.append(Stage(f"representation {method}", folder / "representation.safetensors",
                            lambda m=method: pretrain_representation(m), lambda m=method: representation_done(m),
                            needs=("demonstrations" if str(demos) in representation_files(method) else "views",),
                            partial=folder / "last.safetensors"))
    if need_refs:
        stages.append(Stage("references", refs, references, references_done,
                            needs=("demonstrations", *(("pretrain",) if need_don else ()))))
    for name in classes:
        folder = out / cfg.policy_folder(name)
        stages += [
            Stage(cfg.stage("policy", name), folder / "policy.safetensors", lambda n=name: train(n),
                  lambda n=name: trained(n), needs=needs(name), partial=folder / "policy_last.safetensors"),
            Stage(cfg.stage("evaluate", name), folder / "eval" / "eval.json", lambda n=name: evaluate(n),
                  lambda n=name: evaluated(n), needs=(cfg.stage("policy", name),), evaluation=evaluation(name)),
        ]
    if need_don:
        pics = [pictures / f"demo_0_{n}.png" for n in ("heatmaps", "descriptors")]
        stages.append(Stage("pictures", pics[0], describe, lambda: check_files(*pics),
                            needs=("pretrain", "demonstrations")))
    video = pictures / "keypoints_demo_0.mp4"
    if classes[cfg.encoder].keypoints:
        stages.append(Stage("keypoint video", video,
                            lambda: keypoint_video(encoder_cfg(cfg.encoder).spec(), demos, video),
                            lambda: check_files(video), needs=needs(cfg.encoder)))
    if need_don and need_refs:
        stages.append(Stage("keypoint error", errors, keypoint_error, keypoint_error_done,
                            needs=("demonstrations", "pretrain", "references")))
    return stages


def _config_path(path: Path) -> Path:
    return path.with_name(path.stem + ".config.json")


def keypoint_video(spec: dict, demos: Path, path: Path, episode: str = "demo_0") -> Path:
    """Keypoints of the encoder `spec` tracked over a demonstration, every camera, coloured by confidence. For an
    encoder that tracks its keypoints over the episode (dckp-gate, dckp-filter: it has `step`), the DON's raw
    keypoints in the top row and the tracked ones below, run from the episode's start as in closed loop."""
    import torch

    from dckp.data import Dataset
    from dckp.encoders import build_encoder
    from dckp.evaluation.rollout import composite
    from dckp.policy.demos import frames_of
    from dckp.viz.images import save_video

    with Dataset(demos) as ds, torch.no_grad():
        cams = ds.streams(episode)
        encoder = build_encoder(spec, cams, ds.frames(episode, cams[0], "rgb", 0, 1).shape[1]).eval()
        encoder.reset()
        images = []
        for t in range(len(ds.actions(episode))):
            frames = frames_of(ds, episode, cams, t, t + 1)
            obs = {f"{c}_rgb": frames[f"{c}_rgb"][0].numpy() for c in cams}
            if hasattr(encoder, "step"):
                images.append(tracking_frame(obs, cams, encoder.step(frames)))
            else:
                images.append(composite(obs, cams, encoder.image_keypoints(frames)))
    return save_video(images, path, fps=10)


def tracking_frame(obs: dict, cams, tracks: dict):
    """Every camera's raw DON keypoints (top row) above its tracked ones (bottom row), from a tracking encoder's
    `step` on one frame; where the tracker has a spread (dckp-filter's particles), a white ring of that radius."""
    from dckp.evaluation.rollout import VIDEO_SIZE
    from dckp.viz.images import colour_scale, draw_keypoints, draw_rings, grid

    rows = [[], []]
    for cam in cams:
        rgb = obs[f"{cam}_rgb"]
        pixels, scale = rgb.shape[0] * rgb.shape[1], max(1, round(VIDEO_SIZE / rgb.shape[0]))
        t = {k: v[0].detach().cpu().float().numpy() for k, v in tracks[cam].items()}
        rows[0].append(draw_keypoints(rgb, t["raw_uv"], colour_scale(t["raw_peak"], pixels), scale))
        panel = draw_keypoints(rgb, t["uv"], colour_scale(t["confidence"], pixels), scale)
        if "spread_px" in t:
            draw_rings(panel, t["uv"] * scale + (scale - 1) / 2, t["spread_px"] * scale)
        rows[1].append(panel)
    return grid(rows, pad=2)


# --- the report ---------------------------------------------------------------------------------------------------

ENCODER_NOTES = {
    "dckp-3d": "DON keypoints with depth (u, v, z): the method",
    "dckp-2d": "DON keypoints in the image (u, v)",
    "dckp-filter": "DON keypoints tracked by a particle filter per keypoint across cameras and time (docs/filter.md)",
    "dckp-gate": "DON keypoints held at their last confident position (the filter's ablation)",
    "gt-kp": "ground-truth keypoints: the same reference pixels moved with the objects' true poses (upper reference)",
    "blind": "no vision: proprioception alone (lower reference)",
    "cnn": "the paper's end-to-end CNN on RGB, trained with the policy",
    "cnnd": "the paper's end-to-end CNN on RGB-D, trained with the policy",
    "resnet-ssm": "robomimic's visual core (ResNet-18, spatial softmax), trained with the policy",
    "bvae": "a beta-VAE pretrained on the task's views, frozen: its latent means",
    "transporter": "a Transporter pretrained on the demonstrations, frozen: its 10 keypoints",
    "monet": "MONet pretrained on the task's views, frozen: its 6 slots' latent means",
}
REPRESENTATION_PICTURES = {"bvae": "reconstructions.png", "transporter": "keypoints.png", "monet": "slots.png"}
PAIR_NOTES = {
    "same_camera": "two views from the same kind of camera, few points hidden",
    "cross_scale": "a close view against a far one",
    "occlusion": "over 20 % of the points hidden in the second view",
}


def data_uri(path: Path) -> str | None:
    """The file as a base64 data URI (png or mp4), or None when it is missing or empty."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    kind = "video/mp4" if path.suffix == ".mp4" else "image/png"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def report_context(out: Path) -> dict:
    """Everything report.html shows, read from the run folder."""
    from dckp.config import from_dict
    from dckp.encoders.base import encoder_class
    from dckp.evaluation.rollout import THIRD_PERSON
    from dckp.sim.tasks import get_task

    config = _read_json(out / "run.config.json")
    preset = config.pop("preset", "?")
    cfg = from_dict(RunConfig, config, source=str(out / "run.config.json"))
    task = get_task(cfg.task)
    rows, evals = [], {}
    for name in cfg.encoders():
        path = out / cfg.policy_folder(name) / "eval" / "eval.json"
        if not path.exists():
            continue
        ev = evals[name] = _read_json(path)
        rows.append({"encoder": name, "note": ENCODER_NOTES.get(name, ""), "successes": ev["successes"],
                     "episodes": ev["episodes"], "rate": ev["success_rate"], "ci": ev["ci95"],
                     "mean_steps": ev["mean_steps"], "ms": ev["ms_per_step"]})
    seeds = sorted({e["seed"] for ev in evals.values() for e in ev["per_episode"]})
    per_seed = {name: {e["seed"]: e for e in ev["per_episode"]} for name, ev in evals.items()}
    episodes = [{"seed": s, "runs": [per_seed[n].get(s) for n in evals]} for s in seeds]
    videos = []
    main = evals.get(cfg.encoder)
    if main:
        for name in main.get("videos", []):
            seed = int(Path(name).stem.rsplit("_", 1)[1])
            videos.append({"uri": data_uri(out / cfg.policy_folder(cfg.encoder) / "eval" / Path(name).name),
                           **per_seed[cfg.encoder][seed]})
    corr_path = out / "heldout_correspondence.json"
    corr = _read_json(corr_path) if corr_path.exists() else None
    corr_rows = [{"kind": k, "note": PAIR_NOTES.get(k, ""), **v} for k, v in (corr or {}).get("results", {}).items()]
    errors_path = out / "keypoint_error.json"
    errors = _read_json(errors_path) if errors_path.exists() else None
    timings_path = out / "stage_seconds.json"
    timings = _read_json(timings_path) if timings_path.exists() else {}
    order = [s.name for s in plan(cfg, out, "paper" if preset == "paper" else "cpu")]
    timings = sorted(timings.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    pictures, main_dir = out / "pictures", out / cfg.policy_folder(cfg.encoder)
    return {
        "task": task, "preset": preset, "cfg": cfg, "config_json": json.dumps({"preset": preset, **config}, indent=2),
        "rows": rows, "encoders": list(evals), "episodes": episodes, "videos": videos,
        "cameras": list(task.cameras), "third_person": THIRD_PERSON, "heldout": corr, "heldout_rows": corr_rows,
        "keypoint_error": errors, "keypoint_rows": keypoint_rows(errors) if errors else [],
        "timings": timings, "total_seconds": sum(v for _, v in timings if v is not None),
        "has_don": any("don" in encoder_class(n).artefacts for n in cfg.encoders()),
        "representation_pictures": [
            {"method": n, "uri": data_uri(out / f"representation_{n}" / REPRESENTATION_PICTURES[n])}
            for n in cfg.encoders() if n in REPRESENTATION_PICTURES],
        "keypoint_video": data_uri(pictures / "keypoints_demo_0.mp4"),
        "descriptors": data_uri(pictures / "demo_0_descriptors.png"),
        "heatmaps": data_uri(pictures / "demo_0_heatmaps.png"),
        "masks": data_uri(out / "views_masks.png"),
        "don_curves": data_uri(out / "don" / "train_curves.png"),
        "policy_curve": data_uri(main_dir / "policy_loss.png"),
    }


KEYPOINT_SPLITS = ("all", "visible_near", "visible_far", "occluded")


def keypoint_rows(errors: dict) -> list[dict]:
    """The report's rows of `keypoint_error.json`: per camera and method, the share in the image and the median px
    and mm (raw and symmetry-aware) over all / visible near / visible far / occluded keypoints."""
    def cell(r: dict, key: str, spec: str) -> str:
        return " / ".join("-" if r[s][key] is None else format(r[s][key], spec) for s in KEYPOINT_SPLITS)

    return [{"camera": cam, "method": m, "in_image": errors["in_image"][cam], "keypoints": r["all"]["keypoints"],
             **{k: cell(r, f"median_{k}", ".1f" if k.startswith("px") else ".0f")
                for k in ("px", "px_sym", "mm", "mm_sym")}}
            for m, per_cam in errors["by_method"].items() for cam, r in per_cam.items()]


def write_report(out: Path) -> Path:
    """report.html of a run folder: one self-contained page (pictures and videos inlined), from the template."""
    import jinja2

    template = (resources.files("dckp") / "templates" / "report.html.j2").read_text()
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    page = env.from_string(template).render(**report_context(Path(out)))
    path = Path(out) / "report.html"
    atomic_write_bytes(path, page.encode())
    return path
