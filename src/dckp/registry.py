"""What the class registries share (encoders, policy heads): a package whose every module registers the classes it
defines when imported, and looking a name up with a one-line error that lists the choices."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TypeVar

from dckp.errors import DckpError

T = TypeVar("T")


def import_modules(package: str, folder: str | Path, support: set[str]) -> None:
    """Import every module of `package` (in `folder`) but the `support` ones, which define no registered class."""
    for module in pkgutil.iter_modules([str(folder)]):
        if module.name not in support:
            importlib.import_module(f"{package}.{module.name}")


def lookup(classes: dict[str, T], name: str, kind: str) -> T:
    """`classes[name]`; DckpError on the field `kind` naming the choices for an unknown name."""
    if name not in classes:
        raise DckpError(f"unknown {kind} {name!r}; choose from {sorted(classes)}", field=kind)
    return classes[name]
