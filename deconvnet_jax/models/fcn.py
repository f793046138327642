"""FCN-8s (Long, Shelhamer, Darrell, CVPR 2015) on DeconvNet's VGG16-BN encoder: the second
member of the EDeconvNet ensemble (PAPER.md "Inference").

Parameter tree (encoder and fc6/fc7 under the same paths as DeconvNet, so VGG16 import via
``interop.torch_weights.vgg16_to_flax`` and encoder transfer work on it unchanged):

  block1/{conv1_1, conv1_1_bn, conv1_2, conv1_2_bn}   ...  block5/{conv5_1 ... conv5_3_bn}
  fc/{fc6, fc6_bn, fc7, fc7_bn}                        7x7 valid conv, 1x1 conv, each + BN + ReLU
  score_fr, score_pool4, score_pool3                   1x1 convs to num_classes (bias, no BN)
  upscore2, upscore_pool4, upscore8                    transposed convs 4/2, 4/2, 16/8 (no bias),
                                                       initialised to bilinear upsampling

Geometry: exactly the Caffe ``voc-fcn8s`` net. conv1_1 pads the input by 100 (``FCN_PAD``), the
pools are 2x2/2 in Caffe's ceil mode, and the score maps are cropped at the offsets Caffe's
``coord_map`` gives for this net (5, 9, 31). Derivation, writing d(y) for the input-image
coordinate of position y of a layer (a k x k conv with pad p maps y -> y - p + (k-1)/2, a 2x2/2 pool
y -> 2y + 1/2, a k/s transposed conv z -> (z - (k-1)/2) / s):

  pool3: d = 8y - 95.5     pool4: d = 16y - 91.5     fc6 / score_fr: d = 32y + 12.5
  upscore2: d = 16z - 11.5        -> score_pool4 row y = z + 5 has the same d: offset 5
  upscore_pool4: d = 8z - 23.5    -> score_pool3 row y = z + 9:                 offset 9
  upscore8: d = z - 31            -> image row y = z - 31:                      offset 31

so the output is [B, H, W, C] aligned pixel-for-pixel with the input for any H, W >= 1 (the pad of
100 keeps fc6's 7x7 valid window and every crop inside the maps); the crop offsets do not depend on
the input size.

Two variants (``batch_norm``):
- ``FCN8s()`` (default, registry "fcn8s", for training from scratch): BN + ReLU after every encoder
  conv and fc6/fc7 (as in DeconvNet), no dropout; all three upsampling kernels are learned
  (initialised to bilinear on the class diagonal), none has a bias.
- ``FCN8s(batch_norm=False)`` (registry "fcn8s_caffe"): the public FCN-8s exactly
  (``fcn-8s-pascal-deploy.prototxt``, the net the paper ensembles with): no BN, conv + bias + ReLU,
  dropout 0.5 after ReLU of fc6 and of fc7 in training (inverted, as Caffe's: kept values x 2),
  ``upscore2`` (Caffe ``score2``) with a bias, ``upscore_pool4`` (``score4``) without, and
  ``upscore8`` (``upsample``, blobs_lr 0) frozen: its kernel is stored as ``frozen_kernel``, which
  optim.param_groups puts in the "frozen" group (no update, no decay). Its parameter tree, with
  the Caffe layer it maps from (``CAFFE_LAYERS``; conv blob 0 [out, in, kh, kw] ->
  kernel.transpose(2, 3, 1, 0); deconvolution blob 0 [in, out, kh, kw] -> transpose(2, 3, 0, 1);
  blob 1 -> bias):

    block1/{conv1_1, conv1_2} ... block5/{conv5_1, conv5_2, conv5_3}  conv1_1 ... conv5_3
        {kernel [3, 3, in, out], bias [out]}
    fc/{fc6 {kernel [7, 7, 512, 4096], bias}, fc7 {kernel [1, 1, 4096, 4096], bias}}   fc6, fc7
    score_fr {kernel [1, 1, 4096, 21], bias}                                          score-fr
    upscore2 {kernel [4, 4, 21, 21], bias [21]}                                       score2
    score_pool4 {kernel [1, 1, 512, 21], bias}                                        score-pool4
    upscore_pool4 {kernel [4, 4, 21, 21]}                                             score4
    score_pool3 {kernel [1, 1, 256, 21], bias}                                        score-pool3
    upscore8 {frozen_kernel [16, 16, 21, 21]}                                         upsample

  134,489,780 parameters at width 1, 21 classes; no batch_stats.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deconvnet_jax.models.layers import (
    ENCODER,
    FC,
    ModuleDef,
    conv_bn_relu,
    factories,
    scaled,
)

FCN_PAD = 100  # conv1_1's padding in the Caffe net
CROP_POOL4, CROP_POOL3, CROP_SCORE = 5, 9, 31  # Caffe crop offsets (see the module docstring)
SCORES = ("score_fr", "score_pool4", "score_pool3")
UPSAMPLERS: tuple[tuple[str, int, int], ...] = (  # (layer, kernel, stride)
    ("upscore2", 4, 2),
    ("upscore_pool4", 4, 2),
    ("upscore8", 16, 8),
)
SCORE_INIT = nn.initializers.zeros  # the FCN release zero-initialises its score layers
DROPOUT_RATE = 0.5  # public FCN-8s: drop6, drop7
# Caffe layer name (fcn-8s-pascal) -> module name here (batch_norm=False; convs keep their names).
CAFFE_LAYERS = {
    "score-fr": "score_fr",
    "score2": "upscore2",
    "score-pool4": "score_pool4",
    "score4": "upscore_pool4",
    "score-pool3": "score_pool3",
    "upsample": "upscore8",
}


def fcn_layer_paths() -> dict[str, tuple[str, ...]]:
    """Original layer name -> path of its module in the FCN8s parameter tree (BN: name + '_bn')."""
    paths: dict[str, tuple[str, ...]] = {}
    for block, layers, _ in ENCODER:
        for layer in layers:
            paths[layer] = (block, layer)
    for layer, _, _ in FC:  # fc6, fc7
        paths[layer] = ("fc", layer)
    for layer in SCORES + tuple(name for name, _, _ in UPSAMPLERS):
        paths[layer] = (layer,)
    return paths


def bilinear_kernel(kernel_size: int) -> np.ndarray:
    """The 2-D bilinear upsampling filter of FCN's ``surgery.upsample_filt``: [k, k] float32."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    ramp = 1 - np.abs(np.arange(kernel_size) - center) / factor  # [k]
    return np.outer(ramp, ramp).astype(np.float32)


def bilinear_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """Kernel [k, k, C, C] that upsamples each channel bilinearly (zero across channels)."""
    del key
    k, k2, cin, cout = shape
    if k != k2 or cin != cout:
        raise ValueError(f"bilinear init needs a square kernel and in == out channels, got {shape}")
    kernel = np.zeros(shape, np.float32)
    kernel[:, :, np.arange(cin), np.arange(cin)] = bilinear_kernel(k)[:, :, None]
    return jnp.asarray(kernel, dtype)


def max_pool_ceil(x: jax.Array) -> jax.Array:
    """2x2/2 max pooling in Caffe's ceil mode: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C].

    An odd last row/column is pooled on its own (the window is padded with -inf).
    """
    pad = ((0, x.shape[1] % 2), (0, x.shape[2] % 2))
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding=pad)


def crop(x: jax.Array, offset: int, hw: tuple[int, int]) -> jax.Array:
    """x[:, offset:offset + h, offset:offset + w] (Caffe's Crop layer on axes 2, 3)."""
    h, w = hw
    if x.shape[1] < offset + h or x.shape[2] < offset + w:
        raise ValueError(
            f"FCN-8s crop at offset {offset} of size {h}x{w} does not fit in a "
            f"{x.shape[1]}x{x.shape[2]} map"
        )
    return x[:, offset : offset + h, offset : offset + w, :]


class Upsample(nn.Module):
    """Strided transposed convolution without padding (Caffe "Deconvolution", torch
    ConvTranspose2d): [B, n, m, I] -> [B, (n-1)s+k, (m-1)s+k, O].

    The kernel is stored [k, k, in, out] with ``kernel[y, x, i, o] == torch_weight[i, o, y, x]``
    (the same convention as layers.Deconv) and starts as bilinear upsampling.

    Attributes:
      use_bias: add a "bias" [out] (zeros at init; the public FCN-8s' score2).
      frozen: store the kernel as "frozen_kernel", which the optimiser never updates
        (optim.param_groups' "frozen" group; Caffe blobs_lr 0, the public FCN-8s' upsample).
    """

    features: int
    kernel_size: int
    stride: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    use_bias: bool = False
    frozen: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        shape = (k, k, x.shape[-1], self.features)
        name = "frozen_kernel" if self.frozen else "kernel"
        kernel = self.param(name, bilinear_init, shape, self.param_dtype)
        # A transposed conv is a correlation with the flipped kernel over the input dilated by s
        # and padded by k - 1.
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel[::-1, ::-1].astype(self.dtype),
            window_strides=(1, 1),
            padding=((k - 1, k - 1), (k - 1, k - 1)),
            lhs_dilation=(s, s),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def conv_relu(x: jax.Array, conv: ModuleDef, norm: ModuleDef | None, name, feats, kernel, pad):
    """``name`` (a Conv) + ``name_bn`` (when ``norm`` is given) + ReLU."""
    if norm is None:
        return nn.relu(conv(feats, kernel, pad, name=name)(x))
    return conv_bn_relu(x, conv, norm, name, feats, kernel, pad)


class FCNEncoderBlock(nn.Module):
    """DeconvNet's encoder convs (same names and parameters), FCN's pooling (ceil mode, no
    switches).

    Attributes:
      norm: the BN factory, or None for conv + ReLU (the public FCN-8s).
      first_pad: padding of the block's first 3x3 conv (FCN_PAD for conv1_1, else 1).
    """

    layers: Sequence[str]
    features: Sequence[int]
    conv: ModuleDef
    norm: ModuleDef | None
    first_pad: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, (name, feats) in enumerate(zip(self.layers, self.features)):
            x = conv_relu(x, self.conv, self.norm, name, feats, 3, self.first_pad if i == 0 else 1)
        return max_pool_ceil(x)


class FCNFCBlock(nn.Module):
    """fc6 (7x7 valid conv) and fc7 (1x1 conv), each + BN (norm given) + ReLU, each followed by
    dropout ``drop6`` / ``drop7`` when ``dropout_rate`` > 0 and ``train``."""

    features: Sequence[int]
    conv: ModuleDef
    norm: ModuleDef | None
    dropout_rate: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for (name, kernel, _), feats in zip(FC, self.features):
            x = conv_relu(x, self.conv, self.norm, name, feats, kernel, "VALID")
            if self.dropout_rate:
                drop = "drop" + name[2:]  # drop6, drop7 (the Caffe layer names)
                x = nn.Dropout(self.dropout_rate, deterministic=not self.train, name=drop)(x)
        return x


class FCN8s(nn.Module):
    """FCN-8s with DeconvNet's VGG16-BN encoder, or the public FCN-8s (see the module docstring
    for the geometry and the two variants).

    Attributes:
      batch_norm: True: BN after every encoder / fc conv, learned upsampling, no dropout.
        False: the public FCN-8s (no BN, dropout 0.5 after fc6/fc7 in training -- apply with
        ``rngs={"dropout": key}`` when train=True --, score2 bias, frozen ``upsample``).
      num_classes: output classes (21 for VOC).
      width_multiplier: scales the encoder and fc6/fc7 channels (not the class maps).
      dtype: compute dtype; param_dtype: parameter dtype (float32).
      remat: rematerialise each encoder block and the fc block in the backward pass.
      bn_momentum / bn_epsilon / bn_bias_init / conv_impl / conv_grad_impl: as in DeconvNet.
    """

    num_classes: int = 21
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_bias_init: float = 0.001
    conv_impl: str = "auto"
    conv_grad_impl: str = "auto"
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Args: x [B, H, W, 3]. Returns float32 logits [B, H, W, num_classes] aligned to x."""
        if x.ndim != 4:
            raise ValueError(f"FCN8s expects [B, H, W, C] input, got shape {x.shape}")
        h, w = x.shape[1], x.shape[2]
        conv, _, norm = factories(self, train)
        norm = norm if self.batch_norm else None
        caffe = not self.batch_norm
        width = lambda feats: [scaled(f, self.width_multiplier) for f in feats]  # noqa: E731
        remat = nn.remat if self.remat else lambda cls: cls
        score = functools.partial(conv, self.num_classes, 1, "VALID", kernel_init=SCORE_INIT)
        upsample = functools.partial(Upsample, dtype=self.dtype, param_dtype=self.param_dtype)

        x = x.astype(self.dtype)
        pools = []
        for i, (block, layers, feats) in enumerate(ENCODER):
            pad = FCN_PAD if i == 0 else 1
            x = remat(FCNEncoderBlock)(layers, width(feats), conv, norm, pad, name=block)(x)
            pools.append(x)
        pool3, pool4 = pools[2], pools[3]  # [B, H/8 + 25, ...], [B, H/16 + 13, ...] for H = 32k
        fc_widths = width([c for _, _, c in FC])
        drop = DROPOUT_RATE if caffe else 0.0
        # train is static for the (optionally rematerialised) block: an attribute, not an argument
        x = remat(FCNFCBlock)(fc_widths, conv, norm, drop, train, name="fc")(x)

        (up2, k2, s2), (up4, k4, s4), (up8, k8, s8) = UPSAMPLERS
        nc = self.num_classes
        y = upsample(nc, k2, s2, use_bias=caffe, name=up2)(score(name="score_fr")(x))
        y = y + crop(score(name="score_pool4")(pool4), CROP_POOL4, y.shape[1:3])
        y = upsample(nc, k4, s4, name=up4)(y)
        y = y + crop(score(name="score_pool3")(pool3), CROP_POOL3, y.shape[1:3])
        y = upsample(nc, k8, s8, frozen=caffe, name=up8)(y)
        y = crop(y, CROP_SCORE, (h, w))  # [B, H, W, C]
        # float32 logits (float64 when asked for, as in DeconvNet).
        return y.astype(jnp.promote_types(self.dtype, jnp.float32))
