"""Output locks: while a command writes an output, a lock file beside it (`.NAME.lock`) holds the writer's PID,
host, process start time and command. A second writer gets one line naming the holder; a lock whose holder is gone
(killed, or its machine restarted) is taken over with a warning."""

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

    def _holder(self) -> dict | None:
        """The lock file's holder; {} when it is unreadable (being created, or its writer was killed then)."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            return holder if isinstance(holder, dict) else {}
        except json.JSONDecodeError:
            return {} if age < STALE_EMPTY_S else {"pid": None, "host": socket.gethostname()}

    def __enter__(self) -> Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # another writer may take or drop the lock between the checks
            if self._create():
                return self
            holder = self._holder()
            if holder is None:
                continue
            if holder.get("host") == socket.gethostname() and holder.get("pid") in _ancestors():
                self.nested = True
                return self
            if holder == {} or _alive(holder):
                who = (f"PID {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
                       f"({holder.get('command')})" if holder else "another process")
                raise DckpError(f"{self.out} is being written by {who}; wait for it to finish, or stop it (if that "
                                f"process is gone, remove {self.path})", field=self.field)
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
