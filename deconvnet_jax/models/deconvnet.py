"""The DeconvNet network (PAPER.md "Network"): VGG16-BN encoder, fc6/fc7 as convolutions,
fc6_deconv, and a mirrored decoder of unpooling + transposed convolutions.

Parameter tree (layer names as in the original release, grouped by block so that each
block can be rematerialised on its own):

  block1/{conv1_1, conv1_1_bn, conv1_2, conv1_2_bn}   ...  block5/{conv5_1 ... conv5_3_bn}
  fc/{fc6, fc6_bn, fc7, fc7_bn, fc6_deconv, fc6_deconv_bn}
  dblock5/{deconv5_1 ... deconv5_3_bn}  ...  dblock1/{deconv1_1, ..., deconv1_2_bn}
  seg_score

``layer_paths()`` maps every original layer name to its path in that tree.
Every conv/deconv carries a bias and is followed by BatchNorm then ReLU, except seg_score.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deconvnet_jax.models.layers import (
    DECODER_INITS,
    ENCODER,
    FC,
    ModuleDef,
    bn_relu,
    conv_bn_relu,
    factories,
    scaled,
)
from deconvnet_jax.models.pooling import max_pool_with_switches, max_unpool

FC_DECONV: tuple[str, int, int] = ("fc6_deconv", 7, 512)  # (layer, kernel, channels)
DECODER: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = (
    ("dblock5", ("deconv5_1", "deconv5_2", "deconv5_3"), (512, 512, 512)),
    ("dblock4", ("deconv4_1", "deconv4_2", "deconv4_3"), (512, 512, 256)),
    ("dblock3", ("deconv3_1", "deconv3_2", "deconv3_3"), (256, 256, 128)),
    ("dblock2", ("deconv2_1", "deconv2_2"), (128, 64)),
    ("dblock1", ("deconv1_1", "deconv1_2"), (64, 64)),
)
MIN_INPUT = 224  # fc6 is a 7x7 valid conv on pool5 (input / 32)


def layer_paths() -> dict[str, tuple[str, ...]]:
    """Original layer name -> path of its module in the parameter tree (BN: name + '_bn')."""
    paths: dict[str, tuple[str, ...]] = {}
    for block, layers, _ in ENCODER + DECODER:
        for layer in layers:
            paths[layer] = (block, layer)
    for layer, _, _ in FC + (FC_DECONV,):
        paths[layer] = ("fc", layer)
    paths["seg_score"] = ("seg_score",)
    return paths


class EncoderBlock(nn.Module):
    """convN_1..convN_k (3x3 pad 1) + BN + ReLU, then 2x2/2 max pooling with switches."""

    layers: Sequence[str]
    features: Sequence[int]
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for name, feats in zip(self.layers, self.features):
            x = conv_bn_relu(x, self.conv, self.norm, name, feats, 3, 1)
        return max_pool_with_switches(x, 2, 2)


class FCBlock(nn.Module):
    """fc6 (7x7 valid conv), fc7 (1x1 conv), fc6_deconv (7x7 transposed conv), each + BN + ReLU."""

    features: Sequence[int]  # fc6, fc7, fc6_deconv
    conv: ModuleDef
    deconv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (f6_name, k6, _), (f7_name, k7, _) = FC
        fd_name, kd, _ = FC_DECONV
        f6, f7, fd = self.features
        x = conv_bn_relu(x, self.conv, self.norm, f6_name, f6, k6, "VALID")
        x = conv_bn_relu(x, self.conv, self.norm, f7_name, f7, k7, "VALID")
        return bn_relu(self.deconv(fd, kd, 0, name=fd_name)(x), self.norm, fd_name)


class DecoderBlock(nn.Module):
    """Unpooling with the matching pool switches, then deconvN_* (3x3 pad 1) + BN + ReLU."""

    layers: Sequence[str]
    features: Sequence[int]
    output_hw: tuple[int, int]
    deconv: ModuleDef
    norm: ModuleDef
    unpool_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, switches: jax.Array) -> jax.Array:
        x = max_unpool(x, switches, self.output_hw, impl=self.unpool_impl)
        for name, feats in zip(self.layers, self.features):
            x = bn_relu(self.deconv(feats, 3, 1, name=name)(x), self.norm, name)
        return x


class DeconvNet(nn.Module):
    """DeconvNet for semantic segmentation.

    Attributes:
      num_classes: output classes (21 for VOC: background + 20).
      width_multiplier: scales every channel count except the classifier's (tiny models).
      dtype: compute dtype (e.g. jnp.bfloat16).
      param_dtype: parameter dtype (float32; float64 for exact parity checks).
      remat: rematerialise each block in the backward pass (jax.checkpoint) to save memory.
      bn_momentum / bn_epsilon: BatchNorm running-average momentum (flax convention:
        new = momentum * old + (1 - momentum) * batch) and epsilon.
      bn_bias_init: initial BN shift (the release uses 0.001).
      unpool_impl: "scatter" or "window" (None: pooling.DEFAULT_UNPOOL).
      conv_impl: 3x3 layers as "direct" convolutions, "winograd" F(2x2, 3x3), or "auto"
        (on CPU, Winograd where the input has >= 256 channels); see models/winograd.py.
      conv_grad_impl: kernel gradient of the direct 3x3 layers: "xla", "patches" (im2col
        matmuls), "shifted" (nine matmuls) or "auto" (patches on CPU, xla elsewhere); see
        models/conv_grad.py.
      decoder_init: initial kernels of fc6_deconv, the deconvolutions and seg_score: "release"
        (Gaussian, std 0.01, as the release's prototxt) or "he" (the encoder's He-normal,
        std sqrt(2 / fan_in)). From scratch with Adam, std 0.01 kernels under BN move by ~100%
        of their size per step at lr 0.01; "he" is what the CPU demo trains with
        (configs/demo.py).
    """

    num_classes: int = 21
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_bias_init: float = 0.001
    unpool_impl: str | None = None
    conv_impl: str = "auto"
    conv_grad_impl: str = "auto"
    decoder_init: str = "release"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [B, H, W, 3] (H, W >= 224). Returns float32 logits [B, H, W, num_classes]."""
        if x.ndim != 4:
            raise ValueError(f"DeconvNet expects [B, H, W, C] input, got shape {x.shape}")
        if x.shape[1] < MIN_INPUT or x.shape[2] < MIN_INPUT:
            raise ValueError(
                f"DeconvNet needs both input sides >= {MIN_INPUT} (fc6 is a 7x7 valid conv "
                f"on pool5 = input/32); got {x.shape[1]}x{x.shape[2]}"
            )
        conv, deconv, norm = factories(self, train)
        if self.decoder_init not in DECODER_INITS:
            raise ValueError(
                f"decoder_init must be one of {sorted(DECODER_INITS)}, got {self.decoder_init!r}"
            )
        decoder_init = DECODER_INITS[self.decoder_init]
        deconv = functools.partial(deconv, kernel_init=decoder_init)
        width = lambda feats: [scaled(f, self.width_multiplier) for f in feats]  # noqa: E731
        remat = nn.remat if self.remat else lambda cls: cls

        x = x.astype(self.dtype)
        skips = []  # (switches, pre-pool H, W) per block, shallowest first
        for block, layers, feats in ENCODER:
            hw = (x.shape[1], x.shape[2])
            x, switches = remat(EncoderBlock)(layers, width(feats), conv, norm, name=block)(x)
            skips.append((switches, hw))
        fc_feats = width([c for _, _, c in FC + (FC_DECONV,)])
        x = remat(FCBlock)(fc_feats, conv, deconv, norm, name="fc")(x)
        for (block, layers, feats), (switches, hw) in zip(DECODER, reversed(skips)):
            x = remat(DecoderBlock)(
                layers, width(feats), hw, deconv, norm, self.unpool_impl, name=block
            )(x, switches)
        x = conv(self.num_classes, 1, "VALID", kernel_init=decoder_init, name="seg_score")(x)
        # float32 logits (the loss is computed in float32), float64 when asked for (parity tests).
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))
