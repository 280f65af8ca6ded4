"""Observation encoders for the policy: one interface (`Encoder`) and a registry of implementations."""

from dckp.encoders.base import Encoder, frame_cameras, get_encoder, register_encoder


def build_encoder(spec: dict) -> Encoder:
    """An encoder from its JSON spec `{"name": ..., "kwargs": {...}}` (as saved in a policy folder's run.json)."""
    import dckp.encoders.blind  # noqa: F401 - registers blind
    import dckp.encoders.keypoints  # noqa: F401 - registers dckp-2d, dckp-3d, gt-kp

    return get_encoder(spec["name"])(**spec.get("kwargs", {}))


__all__ = ["Encoder", "build_encoder", "frame_cameras", "get_encoder", "register_encoder"]
