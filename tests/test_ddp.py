"""Data-parallel DON pretraining (gloo, 2 processes on the CPU): the same losses as one process with the whole batch,
rank 0 alone writes files, exact resume, `dckp pretrain --nproc 2`; DataLoader workers give the same batches.

The processes are started with torch.multiprocessing and torchrun's environment variables (what `--nproc` runs,
without torchrun's start-up cost)."""

import dataclasses
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_pretrain import CFG, views_file
from test_representations import GREY, moving_square, random_scenes, read_log, write

from dckp.cli.main import main
from dckp.don.batches import StepBatches
from dckp.don.model import DenseObjectNet
from dckp.don.train import pretrain
from dckp.representations.config import BvaeConfig, MonetConfig, TransporterConfig
from dckp.representations.data import FrameSource
from dckp.representations.train import METHODS, load_representation, pretrain_representation

# lr 3e-5: at 1e-4 and above, Adam's first steps on this tiny problem grow float rounding differences ~50x a step
# (relative loss differences of 2e-3 by step 5); at 3e-5 they stay below 1e-5
TINY = dataclasses.replace(CFG, layers=3, steps=5, batch_pairs=2, lr=3e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_job(rank: int, size: int) -> set[str]:
    """Makes this process rank `rank` of a job of `size` (torchrun's environment variables, one thread); returns
    the set that the paths it writes from now on are added to."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    written = set()
    write = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def audit(event, args):
        if event == "open" and isinstance(args[0], str) and (args[2] or 0) & write:
            written.add(args[0])
        elif event in ("os.rename", "os.mkdir"):
            written.add(str(args[-3 if event == "os.rename" else 0]))

    import sys

    sys.addaudithook(audit)
    return written


def _record(written: set[str], folder: str, name: str) -> None:
    """Writes the paths in `written` under `folder` to `folder/../name.json`."""
    mine = sorted(p for p in written if p.startswith(folder))
    with open(f"{folder}/../{name}.json", "w") as f:
        json.dump(mine, f)


def _rank(rank: int, size: int, ports: list[int], views: str, folder: str) -> None:
    """One process of a job of `size`: a 5-step run, then 3 steps resumed to 5; records what it wrote."""
    written = _in_job(rank, size)
    for port, (name, steps) in zip(ports, [("straight", 5), ("resumed", 3), ("resumed", 5)], strict=True):
        os.environ["MASTER_PORT"] = str(port)
        pretrain([views], dataclasses.replace(TINY, steps=steps), f"{folder}/{name}", checkpoint_every=2,
                 progress=False)
    _record(written, folder, f"written_{rank}")


def _losses(folder) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A 2-process gloo job on a views file; its run folders and what each rank wrote."""
    tmp = tmp_path_factory.mktemp("ddp")
    views_file(tmp / "views.h5")
    (tmp / "runs").mkdir()
    mp.start_processes(_rank, args=(2, [_free_port() for _ in range(3)], str(tmp / "views.h5"), str(tmp / "runs")),
                       nprocs=2, start_method="fork")  # forked: no second import of torch
    written = [json.loads((tmp / f"written_{r}.json").read_text()) for r in range(2)]
    return tmp, written


def test_two_processes_give_the_losses_of_one_with_both_batches(job):
    tmp, _ = job
    one = dataclasses.replace(TINY, batch_pairs=4)
    pretrain([str(tmp / "views.h5")], one, tmp / "one", progress=False)
    two = _losses(tmp / "runs" / "straight")
    assert len(two) == 5 and two[-1] != two[0]
    assert two == pytest.approx(_losses(tmp / "one"), rel=1e-4)
    torch.manual_seed(TINY.seed)
    start = DenseObjectNet(TINY).state_dict()
    w1, w2 = (load_file(tmp / d / "don.safetensors") for d in ("one", "runs/straight"))
    for name, init in start.items():  # weights and batch-norm statistics took the same steps (Adam turns float
        if init.is_floating_point():  # rounding into steps of +-lr in a few coordinates: 2 % of the way at most)
            moved = torch.linalg.vector_norm(w1[f"model/{name}"] - init)
            assert torch.linalg.vector_norm(w2[f"model/{name}"] - w1[f"model/{name}"]) <= 0.05 * moved, name


def test_rank_0_alone_writes_files(job):
    tmp, (rank0, rank1) = job
    assert rank1 == []
    runs = str(tmp / "runs")
    assert any(p.endswith("straight/don.safetensors") for p in rank0)
    assert {os.path.relpath(p, runs).split(os.sep)[0] for p in rank0} == {"straight", "resumed"}


def test_two_processes_resume_exactly(job):
    tmp, _ = job
    assert _losses(tmp / "runs" / "resumed") == _losses(tmp / "runs" / "straight")
    config = json.loads((tmp / "runs" / "resumed" / "pretrain_config.json").read_text())
    assert config["world_size"] == 2


def _fake_popen(calls: list, interrupt: bool = False):
    """A stand-in for subprocess.Popen recording the commands (and signals) it gets; `wait` raises KeyboardInterrupt
    the first time where `interrupt` (the launcher interrupted while torchrun runs)."""

    class Popen:
        def __init__(self, cmd):
            calls.append(cmd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def wait(self):
            if interrupt and not any(isinstance(c, int) for c in calls):
                raise KeyboardInterrupt
            return 0

        def send_signal(self, sig):
            calls.append(sig)

    return Popen


def test_an_interrupted_launcher_passes_sigterm_on_to_torchrun(monkeypatch):
    import signal
    import subprocess

    from dckp.distributed import launch

    calls = []
    monkeypatch.setattr(subprocess, "Popen", _fake_popen(calls, interrupt=True))
    with pytest.raises(KeyboardInterrupt):
        launch(2, ["pretrain", "--nproc", "2"])
    assert calls[1:] == [signal.SIGTERM]  # torchrun got SIGTERM and was waited for


def test_cli_nproc_starts_torchrun(tmp_path, monkeypatch):
    """`dckp pretrain --nproc 2` checks the views, then runs itself under torchrun (without --nproc: the processes
    know their number from torchrun)."""
    import subprocess

    views_file(tmp_path / "views.h5")
    calls = []
    monkeypatch.setattr(subprocess, "Popen", _fake_popen(calls))
    argv = ["pretrain", "--views", str(tmp_path / "views.h5"), "--nproc", "2", "--out", str(tmp_path / "don")]
    assert main(argv) == 0
    assert calls[0][1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                            "dckp.cli.main", "pretrain", "--views", str(tmp_path / "views.h5"), "--out",
                            str(tmp_path / "don")]
    assert main([*argv[:2], str(tmp_path / "missing.h5"), *argv[3:]]) == 2 and len(calls) == 1


def test_loader_workers_give_the_same_batches(tmp_path):
    views_file(tmp_path / "views.h5")
    cfg = dataclasses.replace(TINY, steps=3, crop_min=0.7, rotate=True, jitter=0.2, random_background=True)
    batches = StepBatches([str(tmp_path / "views.h5")], cfg)
    pretrain([str(tmp_path / "views.h5")], cfg, tmp_path / "inline", progress=False)
    pretrain([str(tmp_path / "views.h5")], dataclasses.replace(cfg, workers=2), tmp_path / "workers", progress=False)
    assert _losses(tmp_path / "inline") == _losses(tmp_path / "workers")
    again = StepBatches([str(tmp_path / "views.h5")], cfg, rank=1)  # rank 1's pairs are pairs 2, 3 of the step
    whole = StepBatches([str(tmp_path / "views.h5")], dataclasses.replace(cfg, batch_pairs=4))
    assert torch.equal(again[2]["image_a"], whole[2]["image_a"][2:])
    assert not torch.equal(batches[1]["image_a"], batches[2]["image_a"])


def test_bad_input_in_a_loader_worker_is_one_line(tmp_path, capsys):
    """A DckpError in a DataLoader worker reaches the user as the one line it is, not with the worker's traceback."""
    views_file(tmp_path / "views.h5", n=4)
    argv = ["pretrain", "--views", tmp_path / "views.h5", "--out", tmp_path / "don", "--image-size", "32",
            "--steps", "2", "--min-pose-translation", "10", "--min-pose-rotation-deg", "180", "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'views.h5'}: no valid pair")
    assert "Traceback" not in err


def test_a_two_process_run_goes_on_in_one(job, caplog):
    """Resuming with another number of processes is allowed: it goes on from the checkpoint, and says the pairs per
    step change."""
    import shutil

    tmp, _ = job
    shutil.copytree(tmp / "runs" / "straight", tmp / "regrown")
    summary = pretrain([str(tmp / "views.h5")], dataclasses.replace(TINY, steps=6), tmp / "regrown", progress=False)
    assert summary["resumed_from"] == 5 and summary["processes"] == 1
    assert _losses(tmp / "regrown")[:5] == _losses(tmp / "runs" / "straight")
    assert "resuming a run of 2 process(es) with 1" in caplog.text


# --- representation pretraining (beta-VAE, Transporter, MONet) ----------------------------------------------

REPRESENTATIONS = {  # 2 images (Transporter: pairs) per process and step
    "bvae": BvaeConfig(image_size=16, steps=5, batch=2, conv_channels=4, hidden=8, latent_dim=3),
    "transporter": TransporterConfig(image_size=16, steps=3, batch=2, block_channels=[4, 4, 4, 4], keypoints=3,
                                     max_gap=3),
    "monet": MonetConfig(image_size=32, steps=3, batch=2, slots=3, latent_dim=3, attention_channels=4,
                         vae_channels=4)}


def _representation_rank(rank: int, size: int, ports: list[int], files: dict[str, str], folder: str) -> None:
    """One process of a job of `size`: each method's run, then the beta-VAE's for 3 steps resumed to 5; records
    what it wrote."""
    written = _in_job(rank, size)
    runs = [(m, m, c) for m, c in REPRESENTATIONS.items()]
    runs += [("bvae", "bvae_resumed", dataclasses.replace(REPRESENTATIONS["bvae"], steps=s)) for s in (3, 5)]
    for port, (method, name, cfg) in zip(ports, runs, strict=True):
        os.environ["MASTER_PORT"] = str(port)
        pretrain_representation(method, [files[method]], cfg, f"{folder}/{name}", checkpoint_every=2,
                                progress=False)
    _record(written, folder, f"written_{rank}")


@pytest.fixture(scope="module")
def representation_job(tmp_path_factory):
    """A 2-process gloo job of each method; its run folders and what each rank wrote."""
    tmp = tmp_path_factory.mktemp("ddp_representations")
    views = write(tmp / "views.h5", [random_scenes(0, 12, GREY)], "views")
    demos = write(tmp / "demos.h5", [(rgb, seg) for rgb, seg, _ in (moving_square(k, 8) for k in range(2))], "demos")
    files = {"bvae": views, "transporter": demos, "monet": views}
    (tmp / "runs").mkdir()
    mp.start_processes(_representation_rank, args=(2, [_free_port() for _ in range(5)], files, str(tmp / "runs")),
                       nprocs=2, start_method="fork")
    written = [json.loads((tmp / f"written_{r}.json").read_text()) for r in range(2)]
    return tmp, files, written


@pytest.mark.parametrize("method", list(REPRESENTATIONS))
def test_representation_two_processes_give_the_losses_of_one_with_both_batches(representation_job, method):
    """Each method, 2 processes of 2 images against 1 process of 4: the same images and noise, batch norm over all
    four, the same losses and weights (within float rounding), and a model that loads."""
    tmp, files, _ = representation_job
    cfg = REPRESENTATIONS[method]
    summary = pretrain_representation(method, [files[method]], dataclasses.replace(cfg, batch=4), tmp / f"one_{method}",
                                      progress=False)
    assert summary["processes"] == 1
    two = [r["loss"] for r in read_log(tmp / "runs" / method)]
    assert len(two) == cfg.steps and two[-1] != two[0]
    assert two == pytest.approx([r["loss"] for r in read_log(tmp / f"one_{method}")], rel=1e-4)
    _, _, one = load_representation(tmp / f"one_{method}")
    saved_method, _, two = load_representation(tmp / "runs" / method)
    assert saved_method == method
    torch.manual_seed(cfg.seed)
    start = METHODS[method].build(cfg).eval()
    with FrameSource([files[method]], cfg.image_size) as source:
        images = source.stack([source.frame(*p) for p in source.spread(8)])
    # Weights are not compared one by one, nor features in eval mode: some weights have no gradient but float
    # rounding (a bias before a batch norm, or before a softmax over pixels), which Adam turns into steps of +-lr that
    # differ between the runs, and a batch norm's running mean follows its bias. The running variances do not.
    variances = [k for k in one.state_dict() if k.endswith("running_var")]
    for k in variances:
        torch.testing.assert_close(two.state_dict()[k], one.state_dict()[k], rtol=1e-3, atol=0)
    # The features with batch statistics over 8 images (train mode), which cancel such a bias: 1 % of training's
    # change at most.
    f1, f2, f0 = (METHODS[method].features(m.train(), images) for m in (one, two, start))
    assert (f2 - f1).abs().max() <= 0.01 * (f1 - f0).abs().max()


def test_representation_rank_0_alone_writes_files(representation_job):
    tmp, _, (rank0, rank1) = representation_job
    assert rank1 == []
    runs = str(tmp / "runs")
    assert {os.path.relpath(p, runs).split(os.sep)[0] for p in rank0} == {*REPRESENTATIONS, "bvae_resumed"}
    assert any(p.endswith("bvae/reconstructions.png") for p in rank0)
    assert json.loads((tmp / "runs" / "monet" / "pretrain_config.json").read_text())["world_size"] == 2


def test_representation_two_processes_resume_exactly(representation_job, caplog):
    """Resumed at step 3 with 2 processes: the losses and weights of the straight run. Then resumed in 1
    process: allowed, with a warning that the images per step change."""
    import shutil

    tmp, files, _ = representation_job
    runs = tmp / "runs"
    assert read_log(runs / "bvae_resumed") == read_log(runs / "bvae")
    straight, resumed = (load_file(runs / d / "representation.safetensors") for d in ("bvae", "bvae_resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    shutil.copytree(runs / "bvae", tmp / "regrown")
    summary = pretrain_representation("bvae", [files["bvae"]], dataclasses.replace(REPRESENTATIONS["bvae"], steps=6),
                                      tmp / "regrown", progress=False)
    assert summary["resumed_from"] == 5 and summary["processes"] == 1
    assert read_log(tmp / "regrown")[:5] == read_log(runs / "bvae")
    assert "resuming a run of 2 process(es) with 1: the images per step change" in caplog.text


def test_cli_pretrain_representation_nproc_starts_torchrun(representation_job, monkeypatch):
    """`dckp pretrain-representation --nproc 2` checks the files, then runs itself under torchrun."""
    import subprocess

    tmp, files, _ = representation_job
    calls = []
    monkeypatch.setattr(subprocess, "Popen", _fake_popen(calls))
    argv = ["pretrain-representation", "--method", "transporter", "--demos", files["transporter"], "--nproc", "2",
            "--out", str(tmp / "cli")]
    assert main(argv) == 0
    assert calls[0][1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                            "dckp.cli.main", *argv[:5], "--out", str(tmp / "cli")]
    assert main([*argv[:4], files["bvae"], *argv[5:]]) == 2 and len(calls) == 1  # a views file: no pairs
