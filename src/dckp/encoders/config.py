"""The encoder part of `dckp train-policy`: which encoder, and its inputs."""

from __future__ import annotations

from dataclasses import dataclass

from dckp.errors import DckpError

ENCODERS = ("dckp-3d", "dckp-2d", "gt-kp", "blind")


@dataclass
class EncoderConfig:
    """encoder: dckp-3d (DON keypoints with depth, the paper's best), dckp-2d, gt-kp (ground-truth keypoints) or
    blind (no visual features: proprioception alone, the control).
    don: the `dckp pretrain` run (dckp encoders); references: the `dckp keypoints` file (all but blind); form: the
    3D form of dckp-3d and gt-kp (depth, camera or world); temperature: of softmax(-distance / T); mode: mode or
    expectation."""

    encoder: str = "dckp-3d"
    don: str = ""
    references: str = ""
    form: str = "depth"
    temperature: float = 0.05
    mode: str = "mode"

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
