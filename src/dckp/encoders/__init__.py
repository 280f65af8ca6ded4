"""Observation encoders for the policy: one interface (`Encoder`) and a registry of implementations."""

from dckp.encoders.base import Encoder, frame_cameras, get_encoder, register_encoder

__all__ = ["Encoder", "frame_cameras", "get_encoder", "register_encoder"]
