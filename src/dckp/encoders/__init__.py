"""Observation encoders for the policy: one interface (`Encoder`) and a registry of implementations.

Names are imported on first use, so `dckp.encoders.config` loads without torch (the CLI builds its flags from it)."""

from dckp.lazy import lazy_exports

__getattr__, _exported = lazy_exports(__name__, {
    "dckp.encoders.base": ("Encoder", "frame_cameras", "get_encoder", "register_encoder"),
})
__all__ = sorted([*_exported, "build_encoder"])


def build_encoder(spec: dict):
    """An encoder from its JSON spec `{"name": ..., "kwargs": {...}}` (as saved in a policy folder's run.json)."""
    import dckp.encoders.blind  # noqa: F401 - registers blind
    import dckp.encoders.keypoints  # noqa: F401 - registers dckp-2d, dckp-3d, gt-kp
    from dckp.encoders.base import get_encoder

    return get_encoder(spec["name"])(**spec.get("kwargs", {}))
