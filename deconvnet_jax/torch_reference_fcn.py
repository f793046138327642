"""The PyTorch reference FCN-8s (plain torch.nn, NCHW): the same network as models/fcn.py.

Built the way the Caffe voc-fcn8s net is: conv1_1 with padding 100, MaxPool2d(2, 2,
ceil_mode=True), fc6 7x7 / fc7 1x1 convs (+ BN + ReLU here, as in DeconvNet), 1x1 score layers,
ConvTranspose2d(bias=False) upsampling and slicing crops at offsets 5, 9, 31. State-dict keys follow
the original layer names: `<layer>.weight|bias` and
`<layer>_bn.weight|bias|running_mean|running_var` (see interop/fcn_weights.py). Only this module
(and interop) imports torch.
"""

from __future__ import annotations

import torch
from torch import nn

from deconvnet_jax.models.fcn import (
    CROP_POOL3,
    CROP_POOL4,
    CROP_SCORE,
    FCN_PAD,
    UPSAMPLERS,
)
from deconvnet_jax.torch_reference import VGGBNTorch


class FCN8sTorch(VGGBNTorch):
    """FCN-8s in PyTorch. Returns NCHW logits [B, num_classes, H, W] aligned to the input.

    Args:
      num_classes: output classes; the others as VGGBNTorch.
    """

    def __init__(
        self,
        num_classes: int = 21,
        width_multiplier: float = 1.0,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ):
        super().__init__(width_multiplier, bn_momentum, bn_eps)
        f7, widths = self.build_encoder_fc(first_pad=FCN_PAD)
        self.layers["score_fr"] = nn.Conv2d(f7, num_classes, 1)
        self.layers["score_pool4"] = nn.Conv2d(widths[3], num_classes, 1)
        self.layers["score_pool3"] = nn.Conv2d(widths[2], num_classes, 1)
        for name, k, s in UPSAMPLERS:
            self.layers[name] = nn.ConvTranspose2d(
                num_classes, num_classes, k, stride=s, bias=False
            )
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)

    @staticmethod
    def _crop(x: torch.Tensor, offset: int, like_hw) -> torch.Tensor:
        h, w = like_hw
        return x[:, :, offset : offset + h, offset : offset + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pools = []
        for names in self.encoder:
            for name in names:
                x = self._cbr(x, name)
            x = self.pool(x)
            pools.append(x)
        x = self._cbr(self._cbr(x, "fc6"), "fc7")
        up = self.layers["upscore2"](self.layers["score_fr"](x))
        up = up + self._crop(self.layers["score_pool4"](pools[3]), CROP_POOL4, up.shape[-2:])
        up = self.layers["upscore_pool4"](up)
        up = up + self._crop(self.layers["score_pool3"](pools[2]), CROP_POOL3, up.shape[-2:])
        up = self.layers["upscore8"](up)
        return self._crop(up, CROP_SCORE, (h, w))
