"""Package names imported on first use, so that a package's light modules (its config, which the CLI reads to
build its flags) load without torch."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]):
    """`(__getattr__, __all__)` for `package`, whose names live in the modules of `exports` (module -> names)."""
    owner = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in owner:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(owner[name]), name)

    return __getattr__, sorted(owner)
