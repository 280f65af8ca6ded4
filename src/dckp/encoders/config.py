"""The encoder part of `dckp train-policy` and `dckp run`: which encoder, and the artefacts it is built from.
Light: torch is imported only when the registry is read, so the CLI builds its flags from this quickly.

Each encoder's own settings are the `options` dataclass of its class (`dckp.encoders.base`); `add_option_args`
gives every registered encoder's options as flags, and `options_from_args` reads the chosen encoder's back."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from dckp.config import add_config_args, apply_args, option
from dckp.errors import DckpError

ARTEFACT_MADE_BY = {"don": "a DON run folder (from `dckp pretrain`)",
                    "references": "a references file (from `dckp keypoints`)",
                    "representation": "a representation run folder (from `dckp pretrain-representation`)"}


def encoder_names() -> list[str]:
    """The registered encoders' names, sorted."""
    from dckp.encoders.base import registry

    return sorted(registry())


@dataclass
class EncoderConfig:
    """The policy's observation encoder and the artefacts it is built from (only those its class lists)."""

    encoder: str = option("dckp-3d", "observation encoder", choices=encoder_names)
    don: str = option("", "the `dckp pretrain` run folder (encoders built on a DON: dckp-3d, dckp-2d)")
    references: str = option("", "the reference keypoints file from `dckp keypoints` (keypoint encoders)")
    representation: str = option("", "the `dckp pretrain-representation` run folder (bvae, transporter, monet)")

    def __post_init__(self):
        from dckp.encoders.base import encoder_class

        for artefact in encoder_class(self.encoder).artefacts:
            if not getattr(self, artefact):
                raise DckpError(f"encoder {self.encoder} needs {ARTEFACT_MADE_BY[artefact]}", field=artefact)

    def spec(self, options=None) -> dict:
        """`{"name", "options", "artefacts"}`, as `dckp.encoders.build_encoder` takes it; `options` defaults to the
        encoder's own defaults."""
        from dckp.encoders.base import encoder_class

        cls = encoder_class(self.encoder)
        options = options if options is not None else cls.options()
        if type(options) is not cls.options:
            raise DckpError(f"options of type {type(options).__name__}, expected {cls.options.__name__}",
                            field="options")
        return {"name": self.encoder, "options": dataclasses.asdict(options),
                "artefacts": {a: getattr(self, a) for a in cls.artefacts}}


def add_option_args(parser: argparse.ArgumentParser) -> None:
    """One flag per field of every registered encoder's options (a field that several share, once)."""
    from dckp.encoders.base import registry

    seen: dict[str, dataclasses.Field] = {}
    for name, cls in sorted(registry().items()):
        fields = dataclasses.fields(cls.options)
        for f in fields:
            if f.name in seen and (seen[f.name].metadata, seen[f.name].default) != (f.metadata, f.default):
                raise ValueError(f"encoder {name}: option {f.name!r} differs from another encoder's")
        if any(f.name not in seen for f in fields):
            add_config_args(parser, cls.options, title=f"{name} options", skip=set(seen))
        seen.update({f.name: f for f in fields})


def options_from_args(encoder: str, args: argparse.Namespace):
    """The options of `encoder` with the flags the user gave."""
    from dckp.encoders.base import encoder_class

    return apply_args(encoder_class(encoder).options(), args)
