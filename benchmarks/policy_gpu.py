"""End-to-end policy training on a GPU: `cnn`, `cnnd` and `resnet-ssm` policies train with `--device cuda`.
Writes `$OUT/gpu_policy.json` (or /tmp); results/policy_gpu.{json,md} hold the run on an H200.

    PYTHONPATH=src python benchmarks/policy_gpu.py runs/tasks/lift/demos.h5

Per encoder: 200 cpu-preset policy steps on cuda (resnet-ssm on windows of 10 steps, as benchmarks/policy.py
trains it) and, for scale, 20 on the machine's CPU with 16 threads; steps/s and the first and last loss. The
first steps include decoding the demonstrations into memory. Last, the cuda-trained checkpoint must hold CPU
tensors with the encoder's weights.
"""
import dataclasses
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file

from dckp.learn import train_on_demos
from dckp.policy.config import POLICY_PRESETS

demos = sys.argv[1]
out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
for name, seq_len, steps in (("cnn", 0, 200), ("cnnd", 0, 200), ("resnet-ssm", 10, 200)):
    for device in ("cuda", "cpu"):
        if device == "cpu":
            torch.set_num_threads(16)
            steps_here = 20
        else:
            steps_here = steps
        base = POLICY_PRESETS["cpu"]
        cfg = dataclasses.replace(base, steps=steps_here, head_options={**base.head_options, "seq_len": seq_len},
                                  device=device, checkpoint_every=steps_here)
        folder = f"/tmp/pol_{name}_{device}"
        t = time.time()
        r = train_on_demos(demos, {"name": name}, cfg, folder, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t
        out[f"{name}_{device}"] = {"steps": steps_here, "s": round(dt, 1), "steps_per_s": round(steps_here / dt, 2),
                                   "loss_start": r["loss_start"], "loss_end": r["loss_end"]}
        print(name, device, out[f"{name}_{device}"], flush=True)
w = load_file("/tmp/pol_cnn_cuda/policy.safetensors")
out["cuda_checkpoint_on_cpu"] = all(v.device.type == "cpu" for v in w.values()) and any(k.startswith("encoder.")
                                                                                         for k in w)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "gpu_policy.json"), "w"), indent=1)
print(json.dumps(out, indent=1))
