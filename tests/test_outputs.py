"""Nothing lost, from the user's side: an input given as the output, an output that is there already, a folder of
the wrong kind or read-only, two writers, and SIGTERM or SIGKILL during a collection, then the rerun."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_inputs import _demos, _views

import dckp
from dckp.cli.main import main
from dckp.lock import Lock, lock_path

SRC = str(Path(dckp.__file__).parent.parent)


def _one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(w in err[0] for w in words), err
    return err[0]


def _dckp(*argv, prefix: tuple[str, ...] = (), **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*prefix, sys.executable, "-m", "dckp.cli.main", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC, "MUJOCO_GL": "egl"}, **kwargs)


def _read_only(folder: Path) -> tuple[str, ...]:
    """Make `folder` read-only for the commands run with the prefix returned: by its mode, or for root, whom modes
    do not stop, by a read-only bind mount in a mount namespace of their own (nothing changes outside it)."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return ()
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
              str(folder))
    if subprocess.run([*prefix, "true"], capture_output=True).returncode:
        pytest.skip("running as root without mount namespaces: no folder is read-only to root")
    return prefix


def _left(folder: Path) -> list[str]:
    """Temp files and locks under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".tmp" in p.name or p.suffix == ".lock")


def test_the_input_given_as_the_output_is_refused(tmp_path, capsys):
    demos = tmp_path / "d.h5"
    _demos(demos)
    before = demos.read_bytes()
    (tmp_path / "link.h5").symlink_to(demos)
    for out in (demos, tmp_path / "link.h5"):
        for force in ([], ["--force"]):
            assert main(["export", str(demos), "--format", "robomimic", "--out", str(out), *force]) == 2
            _one_line(capsys, "--out", "is the input")
    assert main(["export", str(tmp_path / "link.h5"), "--format", "robomimic", "--out", str(demos)]) == 2
    _one_line(capsys, f"{demos} is the input {tmp_path / 'link.h5'}")
    # a folder output holding the input, which replacing the folder would delete
    assert main(["export", str(demos), "--format", "folder", "--out", str(tmp_path), "--force"]) == 2
    _one_line(capsys, "holds the input")
    assert demos.read_bytes() == before and _left(tmp_path) == []


def test_a_bare_switch_leaves_the_next_argument_to_the_command(tmp_path, capsys):
    """`--force` (a bool flag) before a positional is the switch: the positional stays the command's input; a value
    (true/false) after it is still the flag's."""
    views, out = tmp_path / "v.h5", tmp_path / "exported"
    _views(views, masks=False)
    out.mkdir()
    (out / "old").write_text("x")
    assert main(["export", "--force", str(views), "--format", "folder", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["scene_0"]
    capsys.readouterr()
    assert main(["export", "--force", "false", str(views), "--format", "folder", "--out", str(out)]) == 2
    _one_line(capsys, f"--out: {out} exists; give --force")


def test_an_existing_output_needs_force_and_a_folder_is_replaced_whole(tmp_path, capsys):
    views, out = tmp_path / "v.h5", tmp_path / "exported"
    _views(views, masks=False)
    argv = ["export", str(views), "--format", "folder", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    (out / "scene_7").mkdir()  # an earlier, larger export
    (out / "scene_0" / "rgb" / "000099.png").write_bytes(b"stale")
    assert main(argv) == 2
    _one_line(capsys, f"--out: {out} exists; give --force")
    assert main([*argv, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["scene_0"]
    assert not (out / "scene_0" / "rgb" / "000099.png").exists()
    assert main(["import", str(out / "scene_0"), "--out", str(tmp_path / "back.h5")]) == 0
    assert _left(tmp_path) == []


def test_a_failed_replacement_keeps_the_old_folder(tmp_path, capsys):
    views, out = tmp_path / "v.h5", tmp_path / "exported"
    _views(views, masks=False)
    (out / "mine").mkdir(parents=True)
    assert main(["export", str(views), "--format", "folder", "--stream", "nope", "--out", str(out), "--force"]) == 2
    _one_line(capsys, "no stream 'nope'")
    assert [p.name for p in out.iterdir()] == ["mine"] and _left(tmp_path) == []


def test_outputs_of_the_wrong_kind(tmp_path, capsys):
    views = tmp_path / "v.h5"
    _views(views, masks=False)
    cases = [(["collect", "--out", tmp_path], f"{tmp_path} is a folder; give a file"),
             (["export", views, "--format", "tum", "--out", views.with_suffix(".txt")], "is a file; give a folder"),
             (["import", tmp_path, "--out", views / "x.h5"], f"{views} is a file, not a folder"),
             (["view", views, "--out", tmp_path], "is a folder; give a file")]
    views.with_suffix(".txt").write_text("")
    for argv, message in cases:
        assert main([str(a) for a in argv]) == 2
        _one_line(capsys, "--out", message)


def test_a_read_only_folder_is_refused_before_any_work(tmp_path):
    views, ro = tmp_path / "v.h5", tmp_path / "ro"
    _views(views, masks=False)
    ro.mkdir()
    prefix = _read_only(ro)
    cases = [["collect", "--demos", "1", "--out", ro / "d.h5"],
             ["export", views, "--format", "folder", "--out", ro / "e"],
             ["import", tmp_path, "--out", ro / "v.h5"],
             ["table", "--out", ro / "t", "--results", tmp_path / "r"],
             ["table", "--out", tmp_path / "t", "--results", ro / "r"]]
    try:
        for argv in cases:
            p = _dckp(*argv, prefix=prefix, cwd=tmp_path)
            _, err = p.communicate(timeout=120)
            lines = err.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1, err
            assert f"cannot write in {ro} (read-only)" in lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ro", "v.h5"]
    finally:
        ro.chmod(0o755)


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    views, out = tmp_path / "v.h5", tmp_path / "exported"
    _views(views, masks=False)
    argv = ["export", str(views), "--format", "folder", "--out", str(out)]
    with Lock(out, "--out"):  # this process writes `out`
        assert main(argv) == 2
        _one_line(capsys, f"{out} is being written by PID {os.getpid()} on {socket.gethostname()}")
    assert not out.exists()
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock_path(out).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "earlier"}))
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: {out}: taking over the lock of PID {gone.pid}" in err
    assert _left(tmp_path) == []


def test_a_writer_inside_or_around_a_locked_output_is_refused(tmp_path, capsys):
    """Locks nest: an output inside a folder that another process writes is refused, and so is a folder holding an
    output that another process writes (which `--force` would delete under it)."""
    from dckp.lock import _started

    views = tmp_path / "v.h5"
    _views(views, masks=False)
    other = subprocess.Popen(["sleep", "60"])
    try:
        holder = json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": _started(other.pid),
                             "since": "now", "command": "dckp run --out runs"})
        runs = tmp_path / "runs"
        (runs / "x" / "policy").mkdir(parents=True)
        lock_path(runs).write_text(holder)
        assert main(["export", str(views), "--format", "folder", "--out", str(runs / "x" / "exported")]) == 2
        _one_line(capsys, f"{runs / 'x' / 'exported'} is inside {runs}, which is being written by PID {other.pid}")
        lock_path(runs).unlink()
        lock_path(runs / "x" / "policy").write_text(holder)
        assert main(["export", str(views), "--format", "folder", "--out", str(runs / "x"), "--force"]) == 2
        _one_line(capsys, f"{runs / 'x'} holds {runs / 'x' / 'policy'}, which is being written by PID {other.pid}")
        assert (runs / "x" / "policy").is_dir() and not lock_path(runs / "x").exists()
    finally:
        other.kill()
        other.wait()
    assert main(["export", str(views), "--format", "folder", "--out", str(runs / "x" / "exported")]) == 0  # gone


def test_pretrain_into_a_file_or_below_one(tmp_path, capsys):
    views = tmp_path / "v.h5"
    _views(views, masks=True)
    assert main(["pretrain", "--views", str(views), "--out", str(views)]) == 2
    _one_line(capsys, f"{views} is a file; give a folder")
    assert main(["pretrain", "--views", str(views), "--out", str(views / "run")]) == 2
    _one_line(capsys, "is a file, not a folder")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_collection_resumes_to_the_same_bytes(tiny_lift, tmp_path, sig):
    """`tiny_lift` is two lift demonstrations at 64 px collected straight through."""
    out = tmp_path / "lift.h5"
    argv = ["collect", "--demos", "2", "--image-size", "64", "--out", out]
    p = _dckp(*argv)
    first = tmp_path / ".lift.h5.episodes" / "000000.npz"
    deadline = time.time() + 120
    while not first.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGSTOP)  # held at once: under load the second demonstration could finish before the signal
    kept = len(list(first.parent.glob("*.npz")))
    assert kept in (1, 2)
    p.send_signal(sig)
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=60)
    assert not out.exists()
    if sig == signal.SIGTERM:
        assert p.returncode == 143, err
        assert err.strip().splitlines()[-1].startswith(
            f"interrupted: kept the {kept} finished demonstrations in {first.parent}, which the same command resumes "
            f"from; resume with: dckp collect --demos 2")
        assert _left(tmp_path) == []
    else:
        assert p.returncode == -signal.SIGKILL
        assert ".lift.h5.lock" in _left(tmp_path)
    again = _dckp(*argv)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert ("taking over the lock" in err) == (sig == signal.SIGKILL)
    assert f"resuming from the {kept} finished demonstrations" in err
    assert out.read_bytes() == tiny_lift[0].read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["lift.config.json", "lift.h5"]


def test_a_process_started_by_the_lock_holder_writes_under_its_lock(tmp_path):
    """As the processes `dckp pretrain --nproc 2` starts write the folder their launcher locked."""
    views, out = tmp_path / "v.h5", tmp_path / "exported"
    _views(views, masks=False)
    with Lock(out, "--out"):
        child = _dckp("export", views, "--format", "folder", "--out", out)
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()  # still the holder's
    assert (out / "scene_0" / "poses.txt").is_file() and _left(tmp_path) == []


def test_a_dry_run_touches_no_output(tmp_path, capsys):
    """`dckp table --dry-run --force` neither replaces, locks nor cleans its folders."""
    out, results = tmp_path / "t", tmp_path / "r"
    for folder in (out, results):
        folder.mkdir()
        (folder / "mine.txt").write_text("kept")
        (folder / ".x.json.abcd1234.tmp").write_text("not this run's to remove")
    before = sorted(tmp_path.rglob("*"))
    argv = ["table", "--tasks", "lift", "--methods", "blind", "--out", str(out), "--results", str(results)]
    assert main([*argv, "--dry-run", "--force"]) == 0
    assert "lift: 0 of 1 cells done" in capsys.readouterr().out
    assert sorted(tmp_path.rglob("*")) == before


def test_a_signal_ignored_by_the_parent_stays_ignored():
    """`nohup dckp ...` ignores SIGHUP so that closing the terminal does not stop the command: the CLI keeps it so,
    and still stops on SIGTERM."""
    from dckp.cli.main import signals_as_interrupt

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_as_interrupt([]):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert callable(signal.getsignal(signal.SIGTERM))
    finally:
        signal.signal(signal.SIGHUP, before)


def test_signals_blocked_by_the_parent_still_stop_a_command():
    """A command started with SIGTERM blocked (a signal mask is inherited from the parent process) still
    stops on it: the CLI unblocks the stop signals (before, `dckp collect` ran to the end through a SIGTERM)."""
    from dckp.cli.main import signals_as_interrupt

    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})
    try:
        with signals_as_interrupt([]):
            assert not {signal.SIGTERM, signal.SIGHUP} & signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
