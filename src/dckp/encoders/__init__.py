"""Observation encoders for the policy: one interface (`Encoder`) and a registry of implementations.

Names are imported on first use, so `dckp.encoders.config` loads without torch (the CLI builds its flags from it)."""

import importlib

_EXPORTS = {
    "dckp.encoders.base": ("Encoder", "frame_cameras", "get_encoder", "register_encoder"),
}
_MODULE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_MODULE, "build_encoder"])


def build_encoder(spec: dict):
    """An encoder from its JSON spec `{"name": ..., "kwargs": {...}}` (as saved in a policy folder's run.json)."""
    import dckp.encoders.blind  # noqa: F401 - registers blind
    import dckp.encoders.keypoints  # noqa: F401 - registers dckp-2d, dckp-3d, gt-kp
    from dckp.encoders.base import get_encoder

    return get_encoder(spec["name"])(**spec.get("kwargs", {}))


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module 'dckp.encoders' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE[name]), name)
