"""Closed-loop policy evaluation: seeded rollouts, success rate with a Wilson interval, timings and videos.

Names are imported on first use, so `dckp.evaluation.config` loads without torch (the CLI builds its flags from
it)."""

import importlib
import sys
import types

_EXPORTS = {
    "dckp.evaluation.rollout": ("EVAL_SEED_START", "composite", "draw_keypoints", "evaluate_policy", "load_run",
                                "observation_frames", "rollout", "summarise", "wilson_interval"),
}
_MODULE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module 'dckp.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE[name]), name)


class _Package(types.ModuleType):
    """`dckp.evaluation.rollout` stays the function: the import system would bind the submodule of that name here
    when it is first imported."""

    def __setattr__(self, name: str, value) -> None:
        if not (name in _MODULE and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
