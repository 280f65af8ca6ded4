"""Observation encoders for the policy: one interface (`Encoder`) and a registry that every module of this
package adds itself to (see `dckp.encoders.base`).

Names are imported on first use, so `dckp.encoders.config` loads without torch (the CLI builds its flags from it)."""

from dckp.lazy import lazy_exports

__getattr__, _exported = lazy_exports(__name__, {
    "dckp.encoders.base": ("Encoder", "encoder_class", "register", "registry", "unregister"),
})
__all__ = sorted([*_exported, "build_encoder"])


def build_encoder(spec: dict, cameras, image_size: int):
    """An encoder from its spec `{"name", "options": {...}, "artefacts": {"don": path, ...}}` (as saved in a policy
    folder's run.json, see `EncoderConfig.spec`) for these cameras and image size."""
    from dckp.config import from_dict
    from dckp.encoders.base import encoder_class

    cls = encoder_class(spec["name"])
    options = from_dict(cls.options, spec.get("options", {}), source=f"encoder {spec['name']} options")
    return cls(cameras, image_size, options, **spec.get("artefacts", {}))
