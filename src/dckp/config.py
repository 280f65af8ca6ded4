"""Typed dataclass configs: presets, JSON round-trip, validation and CLI flags.

Every stage defines a dataclass and a dict of presets (`cpu`, `paper`). The CLI adds one flag per field
(`--field-name`), so every flag maps to a config field, and each artifact gets the config it was made with.

A field documents its flag with `option` (or, equivalently, `dataclasses.field(metadata={"help": ...,
"choices": ...})`): one line of help, and the fixed set of values where there is one:

    backbone: str = option("resnet18", "torchvision ResNet at output stride 8", choices=BACKBONES)

`--help` then shows `torchvision ResNet at output stride 8 (default: resnet18; paper: resnet50) (choices: ...)`,
the defaults being the presets' values. A field without help metadata gets the clause of its class's
docstring that names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import tempfile
import typing
from pathlib import Path
from typing import Any, TypeVar

from dckp.errors import DckpError

C = TypeVar("C")


def option(default: Any, help: str, choices: typing.Sequence | typing.Callable[[], typing.Sequence] | None = None
           ) -> Any:
    """A dataclass field with its one-line CLI help and, where the values are a fixed set, its choices (or a
    function that lists them when the help is shown, such as the encoder registry's names)."""
    metadata = {"help": help, "choices": choices if callable(choices) or choices is None else tuple(choices)}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_device(device: str, field: str = "device") -> None:
    """Raise `DckpError` on `field` unless `device` is a torch device this project runs on: cpu, cuda or cuda:N."""
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise DckpError(f"must be 'cpu', 'cuda' or 'cuda:N', got {device!r}", field=field)


COMPILE_BACKENDS = ("", "inductor", "cudagraphs", "aot_eager", "eager")  # "": not compiled


def check_compile(backend: str, field: str = "compile") -> None:
    """Raise `DckpError` on `field` unless `backend` is one of `COMPILE_BACKENDS`."""
    if backend not in COMPILE_BACKENDS:
        raise DckpError(f"must be one of {list(COMPILE_BACKENDS)} ('' = off), got {backend!r}", field=field)


def check_device_here(device: str, field: str = "device") -> None:
    """`check_device`, and DckpError unless this machine has that CUDA device (torch is imported only for one)."""
    check_device(device, field)
    if device == "cpu":
        return
    import torch

    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        have = f"{torch.cuda.device_count()} CUDA devices" if torch.cuda.is_available() else "no CUDA device"
        raise DckpError(f"this machine has {have} (torch {torch.__version__}); use --device cpu", field=field)


def temp_beside(path: Path) -> str:
    """A new empty temp file in `path`'s folder (hidden, `.tmp`), with the mode the user's umask gives new
    files (mkstemp's own is 0600). Rename it over `path` when it is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename over `path`."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        Path(tmp).write_bytes(data)
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


def add_config_args(parser: argparse.ArgumentParser, cls: type, presets: dict[str, Any] | None = None,
                    default: str = "cpu", title: str | None = None, skip: typing.Container[str] = ()) -> None:
    """One `--field-name` flag per dataclass field (but those in `skip`); unset flags leave the preset's value.
    The help shows each field's help, its value in the `default` preset (and in the others where it differs) and
    its choices."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or f"{cls.__name__} fields (override the preset)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        origin = typing.get_origin(tp)
        kwargs = {"dest": f.name, "default": None, "help": _help(cls, f, presets, default).replace("%", "%%")}
        if tp is bool:
            group.add_argument(flag, type=parse_bool, metavar="{true,false}", nargs="?", const=True, **kwargs)
        elif origin in (list, tuple):
            group.add_argument(flag, type=typing.get_args(tp)[0], nargs="+", **kwargs)
        else:
            group.add_argument(flag, type=_scalar(tp), **kwargs)


def _help(cls: type, f: dataclasses.Field, presets: dict[str, Any] | None, default: str) -> str:
    text = f.metadata.get("help") or _doc_clause(cls, f.name)
    if presets:
        value = getattr(presets[default], f.name)
        text += f" (default: {_show(value)}" + "".join(
            f"; {name}: {_show(getattr(p, f.name))}" for name, p in presets.items()
            if name != default and getattr(p, f.name) != value) + ")"
    elif f.default is not dataclasses.MISSING:
        text += f" (default: {_show(f.default)})"
    elif f.default_factory is not dataclasses.MISSING:
        text += f" (default: {_show(f.default_factory())})"
    choices = f.metadata.get("choices")
    if choices:
        text += f" (choices: {', '.join(map(str, choices() if callable(choices) else choices))})"
    return text


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else repr(value) if value == "" else str(value)


def _doc_clause(cls: type, name: str) -> str:
    """The clause of `cls`'s docstring that names `name`, for fields without help metadata."""
    doc = " ".join((cls.__doc__ or "").split())
    for clause in re.split(r"(?<=[;.])\s+|\s+-\s+", doc):
        if re.search(rf"\b{name}\b", clause):
            clause = clause.strip(" -;.")
            return clause if len(clause) <= 100 else clause[:100].rsplit(" ", 1)[0] + " ..."
    return f"see the {cls.__name__} docstring"


def _scalar(tp: Any):
    if typing.get_origin(tp) is not None:  # Optional[X]
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


def parse_bool(s: str) -> bool:
    """A bool flag's value: true/false, yes/no or 1/0."""
    if s.lower() in TRUE:
        return True
    if s.lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def bare_switches(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """`args` with each bool flag of `parser` that is not followed by a value (true/false, ...) given as
    `--flag=true`, so that `--force runs/x` is the switch and the positional `runs/x`, not a bad value of it."""
    flags = {s for a in parser._actions if a.type is parse_bool and a.nargs == "?" for s in a.option_strings}
    return [f"{a}=true" if a in flags and (i + 1 == len(args) or args[i + 1].lower() not in TRUE + FALSE) else a
            for i, a in enumerate(args)]


def apply_args(cfg: C, args: argparse.Namespace) -> C:
    """Override `cfg`'s fields with the flags the user gave."""
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cfg)
        if getattr(args, f.name, None) is not None
    }
    hints = typing.get_type_hints(type(cfg))
    changes = {k: _check_type(v, hints[k], "--" + k.replace("_", "-")) for k, v in changes.items()}
    try:
        return dataclasses.replace(cfg, **changes)
    except DckpError as e:  # name the flag
        raise DckpError(e.message, field="--" + e.field.replace("_", "-") if e.field else "flags") from None
