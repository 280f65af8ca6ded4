"""The same command and seed give bit-identical artefacts, whether evaluation runs 1 or 2 workers; another seed
gives other data. What may differ (timings, the feature cache's key) is listed in docs/determinism.md."""

import hashlib
import json
import shutil

import h5py
import numpy as np

from dckp.cli.main import main
from dckp.sim.collect import collect_demos
from dckp.sim.config import CollectConfig

FLAGS = ["--task", "lift", "--demos", "2", "--scenes", "1", "--arm-only", "0", "--heldout-scenes", "1",
         "--image-size", "64", "--don-steps", "3", "--policy-steps", "3", "--episodes", "2", "--max-steps", "10"]
ARTEFACTS = ("demos.h5", "views.h5", "heldout.h5", "don/don.safetensors", "don/last.safetensors",
             "don/train_log.jsonl", "references.safetensors", "policy_dckp-3d/policy.safetensors",
             "policy_dckp-3d/policy_last.safetensors", "policy_dckp-3d/train_log.jsonl",
             "policy_gt-kp/policy.safetensors", "heldout_correspondence.json", "keypoint_error.json")
TIMINGS = ("ms_per_step", "ms_reset")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outcome(path) -> dict:
    """eval.json without its timings."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMINGS}


def test_same_seed_same_bits_other_seed_other_data(tmp_path):
    out = tmp_path / "run"
    runs = []
    for workers in ("1", "2"):
        assert main(["run", "--out", str(out), *FLAGS, "--workers", workers]) == 0
        runs.append(tmp_path / f"run_{workers}")
        shutil.move(out, runs[-1])  # the next run writes to the same path, so stored paths agree
    first, second = runs
    for name in ARTEFACTS:
        assert (first / name).exists(), name
        assert digest(first / name) == digest(second / name), name
    for encoder in ("dckp-3d", "gt-kp"):
        a, b = (outcome(r / f"policy_{encoder}" / "eval" / "eval.json") for r in runs)
        assert a == b and a["episodes"] == 2

    other = tmp_path / "seed1.h5"
    collect_demos(CollectConfig(task="lift", demos=2, image_size=64, seed=1), str(other), progress=False)
    with h5py.File(other) as f, h5py.File(first / "demos.h5") as g:
        assert not np.array_equal(f["data/demo_0/actions"][()], g["data/demo_0/actions"][()])
