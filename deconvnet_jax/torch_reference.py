"""The PyTorch reference DeconvNet (plain torch.nn, NCHW): the same network as models/deconvnet.py.

MaxPool2d(2, 2, return_indices=True) / MaxUnpool2d(2, 2) with the pre-pool size, ConvTranspose2d
for fc6_deconv and the deconvN_* layers. State-dict keys follow the original layer names:
`<layer>.weight|bias` and `<layer>_bn.weight|bias|running_mean|running_var` (see
interop/torch_weights.py). Only this module (and interop) imports torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deconvnet_jax.models.deconvnet import DECODER, ENCODER, FC, scaled


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
        for _, names, feats in ENCODER:
            for name, f in zip(names, feats):
                pad = first_pad if name == "conv1_1" else 1
                self.add(
                    name, nn.Conv2d(cin, scaled(f, self.wm), 3, padding=pad), scaled(f, self.wm)
                )
                cin = scaled(f, self.wm)
            self.encoder.append(names)
            widths.append(cin)
        f6, f7 = (scaled(c, self.wm) for _, _, c in FC[:2])
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
        fd = scaled(FC[2][2], self.wm)
        self.add("fc6_deconv", nn.ConvTranspose2d(f7, fd, 7), fd)
        cin = fd
        self.decoder = []
        for _, names, feats in DECODER:
            for name, f in zip(names, feats):
                self.add(
                    name,
                    nn.ConvTranspose2d(cin, scaled(f, self.wm), 3, padding=1),
                    scaled(f, self.wm),
                )
                cin = scaled(f, self.wm)
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
