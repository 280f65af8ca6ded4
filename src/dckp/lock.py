"""Output locks: while a command writes an output, a lock file beside it (`.NAME.lock`) holds the writer's PID,
host, process start time and command. A second writer gets one line naming the holder, also where one output holds
the other (`dckp train-policy --out runs/x/policy` while `dckp run --out runs/x` writes); a lock whose holder is
gone (killed, or its machine restarted) is taken over with a warning."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from dckp.errors import DckpError

STALE_EMPTY_S = 10.0  # an empty or unreadable lock file this old was left by a writer killed while creating it


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (`/proc/PID/stat`), so a PID reused by another process
    is not taken for the holder; None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _ancestors() -> set[int]:
    """The PIDs of this process's parent, its parent, and so on (from `/proc`; empty where there is none)."""
    pids, pid = set(), os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _alive(holder: dict) -> bool:
    """Whether the lock's holder may still be running: always on another host (it cannot be checked from here)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    started = _started(pid)
    return holder.get("started") is None or started is None or started == holder["started"]


def _holder(path: Path) -> dict | None:
    """A lock file's holder; None without one; {} when it is unreadable (being created, or its writer was killed
    then)."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except json.JSONDecodeError:
        return {} if age < STALE_EMPTY_S else {"pid": None, "host": socket.gethostname()}


def _who(holder: dict) -> str:
    return (f"PID {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} ({holder.get('command')})"
            if holder else "another process")


class Lock:
    """`with Lock(out, field="--out"):` holds `.NAME.lock` beside `out` (a file or a folder) while the block runs.
    `taken_over` is the holder of a stale lock that was replaced, else None. `nested` is True where the holder is a
    process this one descends from (the processes `dckp pretrain --nproc` starts write what their launcher
    locked): the block runs, and the lock stays the holder's."""

    def __init__(self, out: str | os.PathLike, field: str | None = None):
        self.out, self.path, self.field = Path(out), lock_path(out), field
        self.taken_over: dict | None = None
        self.nested = False

    def _create(self) -> bool:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _started(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["dckp", *sys.argv[1:]])}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        return True

    def _nesting_writer(self) -> tuple[Path, dict] | None:
        """A live writer, other than this process and those it descends from, of a folder that holds `out` or of
        an output inside `out`: (that output, its holder)."""
        out = self.out.absolute()
        locks = [lock_path(p) for p in out.parents if p.name]
        if out.is_dir():
            locks += sorted(out.rglob(".*.lock"))
        mine = {os.getpid(), *_ancestors()}
        for path in locks:
            holder = _holder(path)
            if holder is None or (holder.get("host") == socket.gethostname() and holder.get("pid") in mine):
                continue
            if holder == {} or _alive(holder):
                return path.with_name(path.name[1:].removesuffix(".lock")), holder
        return None

    def __enter__(self) -> Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # another writer may take or drop the lock between the checks
            if self._create():
                other = self._nesting_writer()
                if other is not None:
                    self.__exit__()
                    where = "holds" if other[0].is_relative_to(self.out.absolute()) else "is inside"
                    raise DckpError(f"{self.out} {where} {other[0]}, which is being written by {_who(other[1])}; "
                                    "wait for it to finish, or write somewhere else", field=self.field)
                return self
            holder = _holder(self.path)
            if holder is None:
                continue
            if holder.get("host") == socket.gethostname() and holder.get("pid") in _ancestors():
                self.nested = True
                return self
            if holder == {} or _alive(holder):
                raise DckpError(f"{self.out} is being written by {_who(holder)}; wait for it to finish, or stop it "
                                f"(if that process is gone, remove {self.path})", field=self.field)
            print(f"warning: {self.out}: taking over the lock of PID {holder.get('pid')} on {holder.get('host')}, "
                  "which is no longer running", file=sys.stderr)
            self.taken_over = holder
            self.path.unlink(missing_ok=True)
        raise DckpError(f"could not lock {self.out} ({self.path} keeps changing); try again", field=self.field)

    def __exit__(self, *exc) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass
