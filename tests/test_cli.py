"""The `dckp` command itself: fast start, help for every flag, the user's umask, Ctrl-C during pretraining,
resolved defaults in saved configs and an explicit output file for `eval-correspondence`."""

import json
import logging
import os
import signal
import stat
import subprocess
import sys

import pytest
from test_bad_inputs import _views, make_bad_inputs
from test_pretrain import views_file

from dckp.cli.main import build_parser, main
from dckp.config import atomic_write_bytes
from dckp.data import Dataset, DatasetWriter

HEAVY = ("torch", "torchvision", "mujoco", "robosuite")


TASK_LIST = ("collect", "collect-views", "run", "table")  # flags with the task names: `dckp.sim.tasks` imports mujoco
ENCODER_LIST = ("train-policy", "run", "table")  # flags from the encoder registry, whose entries are torch modules


def test_help_and_tasks_do_not_import_torch():
    """One process parses `--help` of every subcommand in turn (those that list the tasks or the encoders last),
    then runs `dckp tasks`, noting which heavy modules each step has loaded so far."""
    code = f"""if True:
        import contextlib, io, json, sys
        from dckp.cli.main import build_parser, main
        sub = next(a for a in build_parser()._actions if a.dest == "command")
        steps = [["--help"]] + [[n, "--help"] for n in sorted(sub.choices,
                                                              key=lambda n: n in {TASK_LIST + ENCODER_LIST!r})]
        seen = {{}}
        for argv in steps + [["tasks"]]:
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(argv) == 0, argv
            seen[" ".join(argv)] = [m for m in {HEAVY!r} if m in sys.modules]
        print(json.dumps(seen))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert len(seen) == len(commands) + 2  # --help, every subcommand's --help, tasks
    for argv, loaded in seen.items():
        # mujoco: `dckp.sim.tasks.close_door` imports it at the top
        allowed = {"mujoco"} if argv == "tasks" or argv.split()[0] in TASK_LIST else set()
        allowed |= {"torch"} if argv.split()[0] in ENCODER_LIST or argv == "tasks" else set()
        assert set(loaded) <= allowed, (argv, loaded)


def test_tasks_lists_each_tasks_randomisation(capsys):
    from dckp.sim.tasks import TASKS
    from dckp.sim.tasks.base import describe_randomisation

    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for task in TASKS.values():
        row = next(i for i, line in enumerate(lines) if line.startswith(task.name + " "))
        assert lines[row + 1] == "    " + describe_randomisation(task.randomisation)


def test_run_reports_the_preset_it_was_given(tmp_path, monkeypatch):
    import dckp.pipeline

    used = []
    monkeypatch.setattr(dckp.pipeline, "run", lambda cfg, out, preset: used.append((cfg, preset)) or "report.html")
    assert main(["run", "--preset", "demo", "--out", str(tmp_path / "r")]) == 0
    assert used == [(dckp.pipeline.RUN_PRESETS["demo"], "demo")]


def test_every_flag_has_help_with_its_default_and_choices():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        text = " ".join(parser.format_help().split())  # adds the config flags
        for action in parser._actions:
            if action.dest == "help" or not action.option_strings:
                continue
            assert action.help and ("default" in action.help or action.required), (name, action.dest)
        if name == "pretrain":
            assert "(default: resnet18; paper: resnet50) (choices: resnet18, resnet34, resnet50, resnet101)" in text
        if name in ("collect", "run"):
            assert "(choices: close_door, lift, stack" in text
        if name == "train-policy":
            assert "(default: depth) (choices: depth, camera, world)" in text
            assert "(default: eef_pose) (choices: joint_pos, eef_pose)" in text


def test_collect_and_collect_views_default_to_lift():
    from dckp.sim.config import COLLECT_PRESETS, VIEWS_PRESETS

    assert {p.task for p in [*COLLECT_PRESETS.values(), *VIEWS_PRESETS.values()]} == {"lift"}


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        with DatasetWriter(tmp_path / "d.h5", "views", "lift", ["cube"], {}):
            pass
    finally:
        os.umask(old)
    for name in ("a.json", "d.h5"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_demos_0_saves_the_task_number(tmp_path, monkeypatch):
    import dckp.sim.collect

    used = []
    monkeypatch.setattr(dckp.sim.collect, "collect_demos", lambda cfg, out, preset: used.append(cfg) or {})
    assert main(["collect", "--task", "stack", "--demos", "0", "--out", str(tmp_path / "d.h5")]) == 0
    assert used[0].demos == 40  # stack's cpu number: what `collect_demos` writes into the file's config too
    assert json.loads((tmp_path / "d.config.json").read_text())["demos"] == 40


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_bad_inputs(tmp_path_factory.mktemp("cli"))


TINY_DON = ["--image-size", "32", "--layers", "3", "--descriptor-dim", "3", "--batch-pairs", "1", "--n-matches", "32",
            "--n-non-matches", "4", "--arm-fraction", "0", "--min-pose-translation", "0.05"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "SIGTERM", "SIGHUP"])
def test_ctrl_c_in_pretrain_saves_the_current_step(tmp_path, monkeypatch, capsys, caplog, sig):
    """SIGTERM (timeout, Slurm, Ray) and SIGHUP as Ctrl-C: the step finishes and is saved, exit status 128 + the
    signal's number."""
    import dckp.don.train as train

    real, calls = train.train_step, []

    def step_then_ctrl_c(*args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), sig)  # arrives during the third step, which still finishes
        return real(*args)

    monkeypatch.setattr(train, "train_step", step_then_ctrl_c)
    views_file(tmp_path / "views.h5")
    out = tmp_path / "run"
    argv = ["pretrain", "--views", str(tmp_path / "views.h5"), "--out", str(out), "--steps", "5", *TINY_DON]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 128 + sig
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers main set are gone
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no backbone weights is the usual case
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"interrupted: saved {out / 'last.safetensors'} at step 3 of 5; resume with: dckp "
                       + " ".join(argv))
    monkeypatch.setattr(train, "train_step", real)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 3


def test_an_interrupt_that_surfaces_as_another_error_is_still_an_interrupt(tmp_path, monkeypatch, capsys):
    """A signal that lands inside an import of a C extension comes out as an ImportError (seen with torch's triton
    under SIGTERM): after a stop signal, the command reports the interrupt, with its exit status, not a traceback."""
    import dckp.don.train as train

    def interrupted_step(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise ImportError("initialization failed")

    monkeypatch.setattr(train, "train_step", interrupted_step)
    views_file(tmp_path / "views.h5")
    argv = ["pretrain", "--views", str(tmp_path / "views.h5"), "--out", str(tmp_path / "run"), "--steps", "5",
            *TINY_DON]
    assert main(argv) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted: nothing half-written was kept (outputs are renamed into place when complete); run again with: "
        "dckp " + " ".join(argv))


def test_eval_correspondence_writes_where_asked(paths, tmp_path, capsys, monkeypatch):
    import dckp.don.evaluate

    monkeypatch.setattr(dckp.don.evaluate, "sample_eval_pairs", lambda path, per_type, seed: {})
    monkeypatch.setattr(dckp.don.evaluate, "evaluate_model", lambda model, path, pairs: {"pairs": 0})
    out = tmp_path / "results" / "e.json"
    assert main(["eval-correspondence", paths["don"], "--views", paths["views"], "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {paths["views"]: {"pairs": 0}}
    assert capsys.readouterr().out.strip().endswith(f"wrote {out}")
    assert not os.path.exists(os.path.join(paths["don"], "eval_correspondence.json"))
    assert main(["eval-correspondence", paths["don"], "--views", paths["views"]]) == 0  # default: in the run folder
    assert capsys.readouterr().out.strip().endswith(f"wrote {os.path.join(paths['don'], 'eval_correspondence.json')}")


def test_fuse_names_the_users_file_not_its_temp_copy(tmp_path, capsys):
    path = tmp_path / "v.h5"
    _views(path, masks=False)
    # a box that misses the scene: fusion finds no surface in it (found after the temp copy is made)
    assert main(["fuse", str(path), "--workspace-min", "5", "5", "5", "--workspace-max", "6", "6", "6"]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}:data/scene_0/obs/free_depth: no surface inside the workspace box" in err
    assert ".tmp" not in err and [p.name for p in tmp_path.iterdir()] == ["v.h5"]
    with Dataset(path) as ds:
        assert "free_mask" not in ds.keys("scene_0")
