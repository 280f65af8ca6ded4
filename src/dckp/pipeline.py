"""`dckp run`: the whole method for one task, each stage skipped when its artefact exists, ending in report.html.

Stages (folder layout under `out`): demonstrations `demos.h5`, pretraining views `views.h5` (fused masks),
the Dense Object Net `don/`, reference keypoints `references.safetensors`, the policy `policy_<encoder>/`
(cached encodings, training curve) and its closed-loop evaluation `policy_<encoder>/eval/`, pictures in
`pictures/`, and `report.html`, one self-contained page with every number and picture.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dckp.config import atomic_write_bytes, save_json
from dckp.errors import DckpError

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """task; demos (0: the task's number for the preset); scenes and arm_only: pretraining views; image_size;
    don_steps (0: the DON preset's); encoder; policy_steps (0: 1000 single-object, 1500 multi-object);
    episodes and workers: closed-loop evaluation; seed."""

    task: str = "lift"
    demos: int = 0
    scenes: int = 10
    arm_only: int = 2
    image_size: int = 128
    don_steps: int = 0
    encoder: str = "dckp-3d"
    policy_steps: int = 0
    episodes: int = 50
    workers: int = 2
    seed: int = 0

    def __post_init__(self):
        from dckp.encoders.config import ENCODERS
        from dckp.sim.tasks import get_task

        get_task(self.task)
        if self.encoder not in ENCODERS:
            raise DckpError(f"unknown encoder {self.encoder!r}; choose from {list(ENCODERS)}", field="encoder")
        for name in ("scenes", "episodes", "workers"):
            if getattr(self, name) < 1:
                raise DckpError(f"must be >= 1, got {getattr(self, name)}", field=name)


RUN_PRESETS = {
    "cpu": RunConfig(),
    "paper": RunConfig(scenes=40, arm_only=8, image_size=256, episodes=200),
    # make demo: the smallest useful setting, ~10-15 minutes on 2 CPU cores
    "demo": RunConfig(task="lift", demos=10, scenes=4, arm_only=1, don_steps=600, policy_steps=600, episodes=10),
}


def _stage(name: str, done: bool) -> bool:
    log.info("%s: %s", name, "exists, skipped" if done else "running")
    return not done


def run(cfg: RunConfig, out: str | Path, preset: str = "cpu") -> Path:
    """Run every missing stage (with the `cpu` or `paper` presets of each stage); returns the report's path."""
    from dckp.cli.main import main as dckp

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_json({"preset": preset, **dataclasses.asdict(cfg)}, out / "run.config.json")
    timings = {}

    def step(name, artefact: Path, argv: list[str]):
        if _stage(name, artefact.exists()):
            start = time.time()
            if dckp(argv) != 0:
                raise DckpError(f"stage {name} failed (see the message above)", path=str(out))
            timings[name] = time.time() - start

    size = ["--image-size", str(cfg.image_size)]
    step("demonstrations", out / "demos.h5", ["collect", "--preset", preset, "--task", cfg.task, "--demos",
                                              str(cfg.demos), "--seed", str(cfg.seed), *size, "--out",
                                              str(out / "demos.h5")])
    step("views", out / "views.h5", ["collect-views", "--preset", preset, "--task", cfg.task, "--scenes",
                                     str(cfg.scenes), "--arm-only", str(cfg.arm_only), *size, "--out",
                                     str(out / "views.h5")])
    step("masks", out / "views.fuse.config.json", ["fuse", str(out / "views.h5"), "--preset", preset])
    don_steps = ["--steps", str(cfg.don_steps)] if cfg.don_steps else []
    step("pretrain", out / "don" / "don.safetensors", ["pretrain", "--views", str(out / "views.h5"), "--out",
                                                       str(out / "don"), "--preset", preset, *size, *don_steps])
    step("references", out / "references.safetensors", ["keypoints", "--run", str(out / "don"), "--demos",
                                                         str(out / "demos.h5"), "--out",
                                                         str(out / "references.safetensors")])
    policy = out / f"policy_{cfg.encoder}"
    flags = ["--don", str(out / "don")] if cfg.encoder.startswith("dckp") else []
    steps = ["--steps", str(cfg.policy_steps)] if cfg.policy_steps else []
    step("policy", policy / "policy.safetensors", ["train-policy", "--demos", str(out / "demos.h5"), "--encoder",
                                                   cfg.encoder, "--references", str(out / "references.safetensors"),
                                                   "--out", str(policy), "--preset", preset, *flags, *steps])
    step("evaluate", policy / "eval" / "eval.json", ["evaluate", str(policy), "--episodes", str(cfg.episodes),
                                                     "--workers", str(cfg.workers)])
    step("pictures", out / "pictures" / "demo_0_heatmaps.png", ["viz-descriptors", str(out / "don"), "--file",
                                                                str(out / "demos.h5"), "--out", str(out / "pictures")])
    if _stage("keypoint video", (out / "pictures" / "keypoints_demo_0.mp4").exists()):
        keypoint_video(policy, out / "demos.h5", out / "pictures" / "keypoints_demo_0.mp4")
    if timings:
        save_json(timings, out / "stage_seconds.json")
    return write_report(out, cfg, policy)


@torch.no_grad()
def keypoint_video(policy_dir: Path, demos: Path, path: Path, episode: str = "demo_0") -> Path:
    """Keypoints tracked over a demonstration, every camera, coloured by confidence."""
    from dckp.data import Dataset
    from dckp.encoders import build_encoder
    from dckp.evaluation.rollout import composite, load_run
    from dckp.policy.demos import frames_of
    from dckp.viz.images import save_video

    spec = load_run(policy_dir)
    encoder = build_encoder(spec["encoder"])
    with Dataset(demos) as ds:
        cams = ds.streams(episode)
        T = len(ds.actions(episode))
        images = []
        for t in range(T):
            frames = frames_of(ds, episode, cams, t, t + 1)
            obs = {f"{c}_rgb": frames[f"{c}_rgb"][0].numpy() for c in cams}
            images.append(composite(obs, cams, encoder.keypoints(frames)))
    return save_video(images, path, fps=10)


def _img(path: Path) -> str:
    if not path.exists():
        return "<p><em>missing: " + html.escape(path.name) + "</em></p>"
    kind = "video/mp4" if path.suffix == ".mp4" else "image/png"
    data = base64.b64encode(path.read_bytes()).decode()
    if kind == "video/mp4":
        return f'<video controls loop muted autoplay src="data:{kind};base64,{data}"></video>'
    return f'<img src="data:{kind};base64,{data}">'


def write_report(out: Path, cfg: RunConfig, policy: Path) -> Path:
    ev = json.loads((policy / "eval" / "eval.json").read_text())
    rows = [("task", ev["task"]), ("encoder", cfg.encoder),
            ("success rate", f"{ev['success_rate']:.2f} ({ev['successes']}/{ev['episodes']}), 95 % Wilson CI "
                             f"[{ev['ci95'][0]:.2f}, {ev['ci95'][1]:.2f}]"),
            ("mean episode length", f"{ev['mean_steps']:.1f} steps"),
            ("ms per control step", ", ".join(f"{k} {v:.1f}" for k, v in ev["ms_per_step"].items()))]
    eval_corr = out / "don" / "eval_correspondence.json"
    videos = sorted((policy / "eval").glob("rollout_*.mp4"))[:3]
    pictures = out / "pictures"
    parts = [
        "<!doctype html><meta charset='utf-8'><title>dckp run: " + html.escape(cfg.task) + "</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img,video{max-width:100%;margin:4px 0}"
        "td,th{padding:2px 10px;text-align:left}</style>",
        f"<h1>dckp run: {html.escape(cfg.task)}</h1>",
        "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        + "</table>",
        "<h2>Closed-loop rollouts</h2>" + "".join(_img(v) for v in videos),
        "<h2>Keypoints tracked over a demonstration</h2>" + _img(pictures / "keypoints_demo_0.mp4"),
        "<h2>Descriptor images (PCA to RGB) and correspondence heatmaps</h2>",
        _img(pictures / "demo_0_descriptors.png"), _img(pictures / "demo_0_heatmaps.png"),
        "<h2>Object masks from fusion (no labels)</h2>" + _img(out / "views_masks.png"),
        "<h2>Training curves</h2>" + _img(out / "don" / "train_curves.png") + _img(policy / "policy_loss.png"),
    ]
    if eval_corr.exists():
        parts.append("<h2>Correspondence accuracy</h2><pre>" + html.escape(eval_corr.read_text()) + "</pre>")
    parts.append("<h2>Configuration</h2><pre>" + html.escape((out / "run.config.json").read_text()) + "</pre>")
    path = out / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path
