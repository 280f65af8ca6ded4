"""The Dense Object Net: a ResNet at output stride 8, a 1x1 conv to D channels, bilinear upsampling."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dckp.don.config import DonConfig
from dckp.errors import DckpError

log = logging.getLogger(__name__)

_MEAN = (0.485, 0.456, 0.406)  # ImageNet, as torchvision's pretrained ResNets expect
_STD = (0.229, 0.224, 0.225)
_LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _dilate_basic_layer(layer: nn.Sequential, dilation: int) -> None:
    """Stride 1 in the layer's first block (its 3x3 conv and 1x1 downsample), and every 3x3 conv dilated."""
    layer[0].conv1.stride = (1, 1)
    layer[0].downsample[0].stride = (1, 1)
    for block in layer:
        for conv in (block.conv1, block.conv2):
            conv.dilation = conv.padding = (dilation, dilation)


class DenseObjectNet(nn.Module):
    """Images `(B, 3, H, W)` in [0, 1] -> descriptors `(B, D, H, W)`.

    The input is normalised with the ImageNet mean and std. The backbone is torchvision's ResNet (weights=None)
    without avgpool and fc (and without layer4 when `layers` is 3), at output stride 8: for resnet50/101
    through torchvision's `replace_stride_with_dilation=[False, True, True]`; for resnet18/34 (BasicBlock,
    which torchvision cannot dilate) by setting the stride of layer3's and layer4's first block (3x3 conv and
    1x1 downsample) to 1 and dilating every 3x3 conv of layer3 by 2 and of layer4 by 4, with padding equal to
    the dilation. Parameter names and shapes stay those of torchvision, so its state dicts load into
    `backbone`. A 1x1 conv maps the features to D channels and bilinear upsampling (align_corners=False, so
    feature cell i covers pixels 8i..8i+7) brings them to the input size.
    """

    def __init__(self, cfg: DonConfig):
        super().__init__()
        bottleneck = cfg.backbone in ("resnet50", "resnet101")
        resnet = getattr(torchvision.models, cfg.backbone)(
            weights=None, replace_stride_with_dilation=[False, True, True] if bottleneck else None)
        if not bottleneck:
            _dilate_basic_layer(resnet.layer3, 2)
            _dilate_basic_layer(resnet.layer4, 4)
        names = _LAYERS if cfg.layers == 4 else _LAYERS[:-1]
        self.backbone = nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in names))
        channels = resnet.fc.in_features if cfg.layers == 4 else resnet.fc.in_features // 2
        self.head = nn.Conv2d(channels, cfg.descriptor_dim, kernel_size=1)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features `(B, C, ceil(H/8), ceil(W/8))`, C = 512 (resnet18/34) or 2048 (resnet50/101),
        halved with `layers` 3."""
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(images))
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)


def load_backbone_weights(model: DenseObjectNet, path: str | Path | None) -> None:
    """Load a torchvision ResNet state dict from a local file into `model.backbone` (keys of
    modules the backbone lacks, `fc.*` and, with `layers` 3, `layer4.*`, are ignored).

    `.safetensors` files are read with safetensors, anything else with `torch.load(weights_only=True)`.
    No path (None or "") keeps the random initialisation (the usual case), with an INFO line. Nothing is downloaded."""
    if not path:
        log.info("no backbone weights given: the DON backbone starts from random initialisation")
        return
    path = Path(path)
    if not path.is_file():
        raise DckpError("file not found", path=str(path))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DckpError(f"cannot read backbone weights ({type(e).__name__}: {e})".splitlines()[0],
                        path=str(path)) from None
    if not isinstance(state, dict):
        raise DckpError(f"expected a state dict, got {type(state).__name__}", path=str(path))
    keep = tuple(f"{name}." for name in model.backbone._modules)
    state = {k: v for k, v in state.items() if k.startswith(keep)}
    try:
        model.backbone.load_state_dict(state)
    except RuntimeError as e:
        raise DckpError(f"weights do not fit the backbone: {' '.join(str(e).split())[:300]}",
                        path=str(path)) from None
    log.info("loaded backbone weights from %s", path)
