"""The PyTorch reference networks (plain torch.nn, NCHW): DeconvNet and FCN-8s, the same networks
as models/deconvnet.py and models/fcn.py, for parity tests and side-by-side benchmarks.

The layer tables below are typed in from PAPER.md and the Caffe voc-fcn8s net, independently of
the Flax models, so that a test comparing the two checks the models against the paper.
State-dict keys follow the original layer names: ``<layer>.weight|bias`` and
``<layer>_bn.weight|bias|running_mean|running_var`` (torch/weights.py converts to Flax).

- DeconvNet: MaxPool2d(2, 2, return_indices=True) / MaxUnpool2d(2, 2) with the pre-pool size,
  ConvTranspose2d for fc6_deconv and the deconvN_* layers.
- FCN-8s: conv1_1 padded by 100, MaxPool2d(2, 2, ceil_mode=True), fc6 7x7 / fc7 1x1 convs (+ BN +
  ReLU, as in DeconvNet), 1x1 score layers, ConvTranspose2d(bias=False) upsampling and crops at
  offsets 5, 9, 31.
- The public FCN-8s (``fcn8s_caffe_forward``): a functional forward over Caffe blobs by Caffe
  layer name (no BN, dropout masks given, score2 with bias), for the ``FCN8s(batch_norm=False)``
  parity test and Caffe-import tests.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# PAPER.md "Network": (layer names, output channels) per block.
VGG_BLOCKS = (
    (("conv1_1", "conv1_2"), (64, 64)),
    (("conv2_1", "conv2_2"), (128, 128)),
    (("conv3_1", "conv3_2", "conv3_3"), (256, 256, 256)),
    (("conv4_1", "conv4_2", "conv4_3"), (512, 512, 512)),
    (("conv5_1", "conv5_2", "conv5_3"), (512, 512, 512)),
)
FC6, FC7, FC6_DECONV = 4096, 4096, 512
DECONV_BLOCKS = (
    (("deconv5_1", "deconv5_2", "deconv5_3"), (512, 512, 512)),
    (("deconv4_1", "deconv4_2", "deconv4_3"), (512, 512, 256)),
    (("deconv3_1", "deconv3_2", "deconv3_3"), (256, 256, 128)),
    (("deconv2_1", "deconv2_2"), (128, 64)),
    (("deconv1_1", "deconv1_2"), (64, 64)),
)
# Caffe voc-fcn8s: conv1_1 padding, crop offsets, upsampling layers (name, kernel, stride).
FCN_PAD, FCN_CROPS = 100, {"pool4": 5, "pool3": 9, "score": 31}
FCN_UPSAMPLERS = (("upscore2", 4, 2), ("upscore_pool4", 4, 2), ("upscore8", 16, 8))


def scaled(channels: int, width_multiplier: float) -> int:
    """Channel count at a width multiplier (at least 1), rounded as in the Flax models."""
    return max(1, int(round(channels * width_multiplier)))


class VGGBNTorch(nn.Module):
    """Shared parts of the PyTorch references: layers by original name in ``self.layers``
    (each conv followed by ``<name>_bn``), the VGG16-BN encoder + fc6 / fc7, and state dicts
    keyed by the original layer names.

    Args:
      width_multiplier: channel scaling (same rounding as the Flax models).
      bn_momentum: PyTorch convention (0.1 == flax 0.9).
      bn_eps: BatchNorm epsilon.
    """

    def __init__(
        self, width_multiplier: float = 1.0, bn_momentum: float = 0.1, bn_eps: float = 1e-5
    ):
        super().__init__()
        self.layers = nn.ModuleDict()
        self.wm = width_multiplier
        self._bn = dict(eps=bn_eps, momentum=bn_momentum)

    def add(self, name: str, layer: nn.Module, channels: int) -> None:
        """Adds `layer` and its BatchNorm `<name>_bn`."""
        self.layers[name] = layer
        self.layers[name + "_bn"] = nn.BatchNorm2d(channels, **self._bn)

    def build_encoder_fc(self, first_pad: int = 1) -> tuple[int, list[int]]:
        """conv1_1 ... conv5_3, fc6 (7x7), fc7 (1x1), each + BN; sets ``self.encoder``.

        Returns:
          (fc7's channels, each block's output channels).
        """
        cin, widths, self.encoder = 3, [], []
        for names, feats in VGG_BLOCKS:
            for name, f in zip(names, feats):
                pad = first_pad if name == "conv1_1" else 1
                cout = scaled(f, self.wm)
                self.add(name, nn.Conv2d(cin, cout, 3, padding=pad), cout)
                cin = cout
            self.encoder.append(names)
            widths.append(cin)
        f6, f7 = scaled(FC6, self.wm), scaled(FC7, self.wm)
        self.add("fc6", nn.Conv2d(cin, f6, 7), f6)
        self.add("fc7", nn.Conv2d(f6, f7, 1), f7)
        return f7, widths

    def _cbr(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return torch.relu(self.layers[name + "_bn"](self.layers[name](x)))

    def state_dict_flat(self) -> dict[str, torch.Tensor]:
        """State dict by original layer names (no 'layers.' prefix, no num_batches_tracked)."""
        return {
            k[len("layers.") :]: v
            for k, v in self.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }

    def load_flat(self, state: dict) -> None:
        """Loads a state dict keyed by original layer names (every key must match)."""
        full = {
            f"layers.{k}": v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))
            for k, v in state.items()
        }
        missing, unexpected = self.load_state_dict(full, strict=False)
        missing = [m for m in missing if not m.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise KeyError(
                f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )


class DeconvNetTorch(VGGBNTorch):
    """DeconvNet in PyTorch. Returns NCHW logits [B, num_classes, H, W].

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
        f7, _ = self.build_encoder_fc()
        fd = scaled(FC6_DECONV, self.wm)
        self.add("fc6_deconv", nn.ConvTranspose2d(f7, fd, 7), fd)
        cin = fd
        self.decoder = []
        for names, feats in DECONV_BLOCKS:
            for name, f in zip(names, feats):
                cout = scaled(f, self.wm)
                self.add(name, nn.ConvTranspose2d(cin, cout, 3, padding=1), cout)
                cin = cout
            self.decoder.append(names)
        self.layers["seg_score"] = nn.Conv2d(cin, num_classes, 1)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for names in self.encoder:
            for name in names:
                x = self._cbr(x, name)
            size = x.shape[-2:]
            x, idx = self.pool(x)
            skips.append((idx, size))
        for name in ("fc6", "fc7", "fc6_deconv"):
            x = self._cbr(x, name)
        for names, (idx, size) in zip(self.decoder, reversed(skips)):
            x = self.unpool(x, idx, output_size=size)
            for name in names:
                x = self._cbr(x, name)
        return self.layers["seg_score"](x)


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
        for name, k, s in FCN_UPSAMPLERS:
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
        layer, crops = self.layers, FCN_CROPS
        up = layer["upscore2"](layer["score_fr"](x))
        up = up + self._crop(layer["score_pool4"](pools[3]), crops["pool4"], up.shape[-2:])
        up = layer["upscore_pool4"](up)
        up = up + self._crop(layer["score_pool3"](pools[2]), crops["pool3"], up.shape[-2:])
        up = layer["upscore8"](up)
        return self._crop(up, crops["score"], (h, w))


def fcn8s_caffe_forward(
    blobs: dict[str, list[torch.Tensor]],
    x: torch.Tensor,
    drop_masks: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The public FCN-8s (``fcn-8s-pascal-deploy.prototxt``) written directly over Caffe blobs
    with torch functional ops: [B, 3, H, W] -> logits [B, C, H, W].

    Args:
      blobs: Caffe layer name -> [weight, bias?] in Caffe layouts (convolution [out, in, kh, kw],
        deconvolution [in, out, kh, kw], as F.conv_transpose2d takes it).
      x: NCHW input.
      drop_masks: {"drop6", "drop7"} -> 0/1 masks of fc6 / fc7's shape (training: the kept units
        are scaled by 2, dropout 0.5); None: deploy (no dropout).
    """
    F = torch.nn.functional

    def conv(name, x, pad=0):
        return F.conv2d(x, *blobs[name][:2], padding=pad)

    def crop(t, offset, hw):
        return t[:, :, offset : offset + hw[0], offset : offset + hw[1]]

    h, w = x.shape[-2:]
    pools = []
    for names, _ in VGG_BLOCKS:
        for name in names:
            x = torch.relu(conv(name, x, FCN_PAD if name == "conv1_1" else 1))
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        pools.append(x)
    for name, drop in (("fc6", "drop6"), ("fc7", "drop7")):
        x = torch.relu(conv(name, x))
        if drop_masks is not None:
            x = x * drop_masks[drop] * 2.0
    up = F.conv_transpose2d(conv("score-fr", x), *blobs["score2"][:2], stride=2)
    up = up + crop(conv("score-pool4", pools[3]), FCN_CROPS["pool4"], up.shape[-2:])
    up = F.conv_transpose2d(up, blobs["score4"][0], stride=2)
    up = up + crop(conv("score-pool3", pools[2]), FCN_CROPS["pool3"], up.shape[-2:])
    up = F.conv_transpose2d(up, blobs["upsample"][0], stride=8)
    return crop(up, FCN_CROPS["score"], (h, w))
