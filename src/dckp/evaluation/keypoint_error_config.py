"""`dckp eval-keypoints`' settings (`dckp.evaluation.keypoint_error`), importable without torch for the
command's flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dckp.config import add_config_args, option
from dckp.errors import DckpError

METHODS = ("mode", "gate", "filter")
FILES = ("don", "references", "demos")  # the fields without a default: required flags


@dataclass
class KeypointErrorConfig:
    """Keypoint error of a DON's keypoints on the frames of simulator demonstrations."""

    don: str = dataclasses.field(metadata={"help": "a DON run folder (`dckp pretrain --out`)"})
    references: str = dataclasses.field(metadata={"help": "its references file (`dckp keypoints --out`, made with "
                                                          "this DON)"})
    demos: str = dataclasses.field(metadata={"help": "demonstrations of a simulator task (`dckp collect`): the "
                                                     "ground truth comes from their object poses"})
    episodes: int = option(10, "the first N demonstrations")
    near: float = option(0.2, "metres: a visible keypoint nearer the camera than this is `visible_near`, else "
                              "`visible_far`")
    methods: list[str] = option(list(METHODS), "keypoints measured: the DON's mode (dckp-3d), the confidence gate "
                                "(dckp-gate), the particle filter (dckp-filter)", choices=METHODS)

    def __post_init__(self):
        if self.episodes < 1:
            raise DckpError(f"must be >= 1, got {self.episodes}", field="episodes")
        if not self.near > 0:
            raise DckpError(f"must be > 0, got {self.near}", field="near")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise DckpError(f"choose one or more of {list(METHODS)}, got {self.methods}", field="methods")


def add_keypoint_error_args(parser) -> None:
    """One flag per KeypointErrorConfig field, those of its files required."""
    group = parser.add_argument_group("KeypointErrorConfig files (required)")
    for f in dataclasses.fields(KeypointErrorConfig):
        if f.name in FILES:
            group.add_argument("--" + f.name, dest=f.name, required=True, help=f.metadata["help"])
    add_config_args(parser, KeypointErrorConfig, title="KeypointErrorConfig fields", skip=FILES)
