"""The class registries (encoders, policy heads): classes by name, each registered when its subclass is defined,
in a package whose every module is imported on the first lookup, and a one-line error that lists the choices for
an unknown name."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from dckp.errors import DckpError

T = TypeVar("T")


class Registry(Generic[T]):
    """The classes of one `kind` ("encoder", "head") by their `name`. `package` (in `folder`) holds the built-in
    ones: every module but the `support` ones registers the classes it defines when imported. `check(cls)` returns
    what is wrong with a class (an empty string when nothing is), refused at registration."""

    def __init__(self, kind: str, package: str, folder: str | Path, support: set[str],
                 check: Callable[[type], str] = lambda cls: ""):
        self.kind, self.package, self.folder, self.support, self.check = kind, package, Path(folder), support, check
        self.classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Add `cls` under `cls.name` (defining a subclass with a `name` does this); ValueError for a taken name or
        a class that fails `check`."""
        if (taken := self.classes.get(cls.name)) is not None:
            raise ValueError(f"{self.kind} {cls.name!r} is already registered (by {taken.__qualname__})")
        if problem := self.check(cls):
            raise ValueError(f"{self.kind} {cls.name!r}: {problem}")
        self.classes[cls.name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove a class (for tests that register their own)."""
        del self.classes[name]

    def all(self) -> dict[str, type[T]]:
        """Every registered class by name: the built-in ones (the package's modules, imported here) and any
        registered since."""
        for module in pkgutil.iter_modules([str(self.folder)]):
            if module.name not in self.support:
                importlib.import_module(f"{self.package}.{module.name}")
        return dict(self.classes)

    def get(self, name: str) -> type[T]:
        """The class registered as `name`; DckpError on the field `kind` naming the choices for an unknown name."""
        classes = self.all()
        if name not in classes:
            raise DckpError(f"unknown {self.kind} {name!r}; choose from {sorted(classes)}", field=self.kind)
        return classes[name]
