"""The end-to-end CNNs' part of a CPU policy training step: assembling a batch of whole demonstrations from memory
(`FrameWindows.batch`, its cache filled first), the `cnn`/`cnnd` encoder forward and its backward pass. This is
nearly all of a `cnn` or `cnnd` training step (the LSTM head is under 1 % of it in a py-spy profile), and what makes
their table cells take hours on pick_place_clutter.

    PYTHONPATH=src python benchmarks/cnn_step.py runs/table/nut_assembly/demos.h5 --label after

Batches of the `cpu` preset (16 demonstrations drawn with replacement, padded to the longest), the same 5 batches
for every encoder and version, 2 torch threads; the median seconds over the batches. `--label` names the entry of
results/cnn_step.json it writes (`before`: the code before the in-place input conversion, run from that commit),
so both stand side by side; results/cnn_step.md is made from every entry.
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dckp.data import Dataset
from dckp.encoders import build_encoder
from dckp.policy.demos import FrameWindows

parser = argparse.ArgumentParser()
parser.add_argument("demos", help="a demonstrations HDF5 file")
parser.add_argument("--label", default="after", help="entry of results/cnn_step.json to write (default: after)")
parser.add_argument("--batches", type=int, default=5, help="timed batches per encoder (default: 5)")
args = parser.parse_args()
torch.set_num_threads(2)

with Dataset(args.demos) as ds:
    task, cameras = ds.task, ds.streams(ds.episodes[0])
    size = int(ds.frames(ds.episodes[0], cameras[0], "rgb", 0, 1).shape[1])
entry = {"task": task, "cameras": cameras, "image_size": size, "threads": torch.get_num_threads(),
         "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
for name in ("cnn", "cnnd"):
    torch.manual_seed(0)
    enc = build_encoder({"name": name}, cameras, size).train()
    with FrameWindows(args.demos, cameras, enc.inputs) as frames:
        lengths = np.array(frames.lengths)
        everyone = np.arange(len(lengths))
        frames.batch(everyone, np.zeros_like(everyone), np.ones_like(everyone), 1)  # fills the cache
        rng, seconds, frames_per_batch = np.random.default_rng(0), [], []
        for _ in range(args.batches):
            index = rng.integers(len(lengths), size=16)
            frames_per_batch.append(16 * int(lengths[index].max()) * len(cameras))
            t = time.perf_counter()
            batch = frames.batch(index, np.zeros_like(index), lengths[index], int(lengths[index].max()))
            enc.zero_grad()
            enc(batch).square().mean().backward()
            seconds.append(time.perf_counter() - t)
    entry[name] = {"median_s": round(statistics.median(seconds), 3), "images_per_batch": frames_per_batch,
                   "seconds": [round(s, 3) for s in seconds]}
    print(name, entry[name])

path = Path("results/cnn_step.json")
data = json.loads(path.read_text()) if path.exists() else {}
data[args.label] = entry
path.write_text(json.dumps(data, indent=2) + "\n")
rows = [f"| {label} | {e['cnn']['median_s']} | {e['cnnd']['median_s']} |" for label, e in data.items()]
first = next(iter(data.values()))
Path("results/cnn_step.md").write_text(
    "# End-to-end CNN: batch assembly, encoder forward and backward per training step (CPU)\n\n"
    f"{first['task']}'s demonstrations ({', '.join(first['cameras'])}, {first['image_size']} px), 16 whole "
    f"demonstrations per batch, {first['threads']} torch threads, median of the same batches; "
    "`python benchmarks/cnn_step.py DEMOS --label LABEL`. `before`: the input converted with `rgb.float() / 255` "
    "and depth concatenated, and the batch padded and concatenated window by window; `after`: one buffer, scaled "
    "in place, and the batch copied once (the same numbers, bit for bit: tests/test_encoders.py).\n\n"
    "| code | cnn s/step | cnnd s/step |\n|---|---|---|\n" + "\n".join(rows) + "\n")
