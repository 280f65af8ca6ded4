"""Typed dataclass configs: presets, JSON round-trip, validation and CLI flags.

Every stage defines a dataclass and a dict of presets (`cpu`, `paper`). The CLI adds one flag per field
(`--field-name`), so every flag maps to a config field, and each artifact gets the config it was made with.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, TypeVar

from dckp.errors import DckpError

C = TypeVar("C")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(obj: Any, path: str | os.PathLike) -> None:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise DckpError(f"expected {tp.__name__}, got {value!r}", field=where)
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise DckpError(f"expected a list, got {value!r}", field=where)
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return origin(_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check_type(value, inner[0], where)
    return value


def from_dict(cls: type[C], data: dict, source: str = "config") -> C:
    """Build `cls` from a dict, rejecting unknown keys and wrong types with a one-line error."""
    if not isinstance(data, dict):
        raise DckpError(f"expected a JSON object for {cls.__name__}", path=source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DckpError(f"unknown field(s) {unknown} for {cls.__name__}", path=source)
    kwargs = {k: _check_type(v, hints[k], k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except DckpError as e:
        raise DckpError(str(e), path=source) from None


def load_json(cls: type[C], path: str | os.PathLike) -> C:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DckpError("file not found", path=str(path)) from None
    except json.JSONDecodeError as e:
        raise DckpError(f"invalid JSON ({e.msg} at line {e.lineno})", path=str(path)) from None
    return from_dict(cls, data, source=str(path))


def preset(presets: dict[str, C], name: str) -> C:
    if name not in presets:
        raise DckpError(f"unknown preset {name!r}; choose from {sorted(presets)}", field="preset")
    return dataclasses.replace(presets[name])


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field-name` flag per dataclass field; unset flags leave the preset's value."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (override the preset)")
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        origin = typing.get_origin(tp)
        if tp is bool:
            group.add_argument(flag, dest=f.name, type=_parse_bool, default=None, metavar="{true,false}")
        elif origin in (list, tuple):
            inner = typing.get_args(tp)[0]
            group.add_argument(flag, dest=f.name, type=inner, nargs="+", default=None)
        else:
            group.add_argument(flag, dest=f.name, type=_scalar(tp), default=None)


def _scalar(tp: Any):
    if typing.get_origin(tp) is not None:  # Optional[X]
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def apply_args(cfg: C, args: argparse.Namespace) -> C:
    """Override `cfg`'s fields with the flags the user gave."""
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cfg)
        if getattr(args, f.name, None) is not None
    }
    hints = typing.get_type_hints(type(cfg))
    changes = {k: _check_type(v, hints[k], k) for k, v in changes.items()}
    try:
        return dataclasses.replace(cfg, **changes)
    except DckpError as e:
        raise DckpError(str(e), field="flags") from None
