"""The encoder part of `dckp train-policy`: which encoder, and its inputs. Light: no torch, so the CLI builds its
flags from it quickly."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.config import option
from dckp.errors import DckpError

ENCODERS = ("dckp-3d", "dckp-2d", "gt-kp", "blind")
FORMS_3D = ("depth", "camera", "world")  # the 3D forms of `dckp.encoders.keypoints.FORMS`


@dataclass
class EncoderConfig:
    """The policy's frozen observation encoder. dckp-3d: DON keypoints with depth (the paper's best); dckp-2d: DON
    keypoints in the image; gt-kp: ground-truth keypoints (the upper reference); blind: no visual features,
    proprioception alone (the lower reference). See `dckp.encoders.keypoints`."""

    encoder: str = option("dckp-3d", "observation encoder: DON keypoints (3D or 2D), ground-truth keypoints or "
                          "none (blind)", choices=ENCODERS)
    don: str = option("", "the `dckp pretrain` run folder (dckp-3d and dckp-2d)")
    references: str = option("", "the reference keypoints file from `dckp keypoints` (every encoder but blind)")
    form: str = option("depth", "3D form of dckp-3d and gt-kp keypoints: (u, v, depth), camera frame or world "
                       "frame", choices=FORMS_3D)
    temperature: float = option(0.05, "T of the DON keypoint heatmap softmax(-descriptor distance / T)")
    mode: str = option("mode", "DON keypoint: the heatmap's highest pixel (as the paper) or its weighted mean",
                       choices=("mode", "expectation"))

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise DckpError(f"unknown encoder {self.encoder!r}; choose from {list(ENCODERS)}", field="encoder")
        if not self.references and self.encoder != "blind":
            raise DckpError("a references file is needed (from `dckp keypoints`)", field="references")
        if self.encoder.startswith("dckp") and not self.don:
            raise DckpError("the dckp encoders need the DON run folder", field="don")

    def spec(self) -> dict:
        if self.encoder == "blind":
            return {"name": "blind", "kwargs": {}}
        if self.encoder == "gt-kp":
            return {"name": "gt-kp", "kwargs": {"references": self.references, "form": self.form}}
        kwargs = {"run": self.don, "references": self.references, "temperature": self.temperature, "mode": self.mode}
        if self.encoder == "dckp-3d":
            kwargs["form"] = self.form
        return {"name": self.encoder, "kwargs": kwargs}
