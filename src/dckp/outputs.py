"""Outputs that never clobber inputs. Every command's output is checked before work starts (`check_output`:
writable, a file or a folder as the command writes, not any of its inputs, and not there already unless `--force`),
locked while it is written (`dckp.lock`), and its temp files are removed when the command fails, and at the next run
where a killed run left them (`writing`). A folder given `--force` is replaced whole, never merged."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dckp.config import option
from dckp.errors import DckpError
from dckp.lock import Lock


@dataclass
class OutputConfig:
    """How a command treats an output that is already there."""

    force: bool = option(False, "write over an existing output (a folder is replaced whole; a resumable command "
                         "starts over instead of resuming)")


def _existing_ancestor(path: Path, field: str) -> Path:
    """The nearest folder above `path` that exists; DckpError when a file stands where a folder must be."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DckpError(f"{parent} is a file, not a folder; give an output path in a folder", field=field)
            return parent
    raise DckpError(f"no existing folder above {path}", field=field)  # unreachable: / exists


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output(out: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = (), force: bool = False,
                 resumes: bool = False, in_place: bool = False, field: str = "--out") -> Path:
    """DckpError (one line naming `field`) unless `out` can be written as a `kind` ("file" or "folder") without
    harm: its folder is writable; it is not a folder where a file goes (or the other way round); it is none of
    `inputs` (links resolved), and a folder output holds none of them; and it is not there already, unless `force`,
    or `resumes` (a folder the command continues from) or `in_place` (a file rewritten in place) say so."""
    out = Path(out)
    if kind not in ("file", "folder"):
        raise ValueError(kind)
    want = "a file" if kind == "file" else "a folder"
    if out.exists() or out.is_symlink():
        is_dir = out.is_dir()
        if is_dir != (kind == "folder"):
            raise DckpError(f"{out} is {'a folder' if is_dir else 'a file'}; give {want}", field=field)
    writable = out if out.is_dir() and resumes else _existing_ancestor(out.absolute(), field)
    if not os.access(writable, os.W_OK | os.X_OK):
        raise DckpError(f"cannot write in {writable} (read-only); give an output path you can write", field=field)
    for given in inputs:
        given = Path(given)
        if not given.exists():
            continue
        if out.exists() and _same(out, given):
            raise DckpError(f"{out} is the input {given}; write the output somewhere else", field=field)
        if kind == "folder" and out.exists() and given.resolve().is_relative_to(out.resolve()) and (force or
                                                                                                      not resumes):
            raise DckpError(f"{out} holds the input {given}, which replacing it would delete; write the output "
                            "somewhere else", field=field)
    if out.exists() and not (force or resumes or in_place) and not (kind == "folder" and not any(out.iterdir())):
        raise DckpError(f"{out} exists; give --force to replace it, or another path", field=field)
    return out


def temp_files(out: Path) -> list[Path]:
    """The temp files and folders (`.NAME.*.tmp*`, as `dckp.config.temp_beside` names them) of `out`: beside it (its
    own, its config's, a folder set aside by `--force`), inside it where it is a folder, and inside its hidden
    sidecar folders (`.NAME.*/`, such as a collection's finished episodes)."""
    parent, found = out.parent, []
    for pattern in (f".{glob.escape(out.name)}.*", f".{glob.escape(out.stem)}.config.json.*.tmp"):
        for p in parent.glob(pattern):
            if ".tmp" in p.name:
                found.append(p)
            elif p.is_dir():
                found += p.rglob(".*.tmp*")
    if out.is_dir():
        found += out.rglob(".*.tmp*")
    return sorted(set(found))


def remove_temps(out: Path) -> int:
    """Remove `temp_files(out)`; returns how many there were."""
    paths = temp_files(out)
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(paths)


@contextlib.contextmanager
def writing(out: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = (), force: bool = False,
            resumes: bool = False, in_place: bool = False, field: str = "--out") -> Iterator[Path]:
    """Check `out` (`check_output`), lock it (unless a process this one descends from holds it: `Lock.nested`),
    and remove the temp files a killed run left, then run the block.
    With `force`, a folder is replaced whole: a resumable command's is removed (it starts over), another's is set
    aside, put back if the block fails and removed when it succeeds. When the block fails, the temp files of `out`
    are removed (a collection's finished episodes, not temp files, stay for the rerun)."""
    out = check_output(out, kind, inputs, force, resumes, in_place, field)
    with Lock(out, field) as lock:
        if lock.nested:  # the launcher that holds the lock has prepared `out` and cleans up after it
            yield out
            return
        remove_temps(out)
        aside = None
        if force and kind == "folder" and out.is_dir() and any(out.iterdir()):
            if resumes:
                shutil.rmtree(out)
            else:
                aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
                os.replace(out, aside)
        try:
            yield out
        except BaseException:
            if aside is not None:
                shutil.rmtree(out, ignore_errors=True)
                os.replace(aside, out)
            remove_temps(out)
            raise
        if aside is not None:
            shutil.rmtree(aside)


def check_space(out: str | os.PathLike, needed: float, what: str, field: str) -> None:
    """DckpError when the file system of `out` has less than `needed` bytes free (an estimate of `what`)."""
    free = shutil.disk_usage(_existing_ancestor(Path(out).absolute(), field)).free
    if needed > free:
        raise DckpError(f"{what} needs about {needed / 1e9:.3g} GB, but {Path(out).absolute().parent} has "
                        f"{free / 1e9:.3g} GB free; ask for less", field=field)
