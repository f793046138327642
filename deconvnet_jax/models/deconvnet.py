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

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deconvnet_jax.models import winograd
from deconvnet_jax.models.pooling import max_pool_with_switches, max_unpool

# (block name, layer names, output channels at width 1) -- PAPER.md's table.
ENCODER: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = (
    ("block1", ("conv1_1", "conv1_2"), (64, 64)),
    ("block2", ("conv2_1", "conv2_2"), (128, 128)),
    ("block3", ("conv3_1", "conv3_2", "conv3_3"), (256, 256, 256)),
    ("block4", ("conv4_1", "conv4_2", "conv4_3"), (512, 512, 512)),
    ("block5", ("conv5_1", "conv5_2", "conv5_3"), (512, 512, 512)),
)
FC: tuple[tuple[str, int, int], ...] = (  # (layer, kernel, channels)
    ("fc6", 7, 4096),
    ("fc7", 1, 4096),
    ("fc6_deconv", 7, 512),
)
DECODER: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = (
    ("dblock5", ("deconv5_1", "deconv5_2", "deconv5_3"), (512, 512, 512)),
    ("dblock4", ("deconv4_1", "deconv4_2", "deconv4_3"), (512, 512, 256)),
    ("dblock3", ("deconv3_1", "deconv3_2", "deconv3_3"), (256, 256, 128)),
    ("dblock2", ("deconv2_1", "deconv2_2"), (128, 64)),
    ("dblock1", ("deconv1_1", "deconv1_2"), (64, 64)),
)
MIN_INPUT = 224  # fc6 is a 7x7 valid conv on pool5 (input / 32)

Initializer = Callable[..., jax.Array]
ENCODER_INIT: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
DECODER_INIT: Initializer = nn.initializers.normal(0.01)  # release: Gaussian std 0.01, bias 0


def scaled(channels: int, width_multiplier: float) -> int:
    """Channel count at a width multiplier (at least 1)."""
    return max(1, int(round(channels * width_multiplier)))


def layer_paths() -> dict[str, tuple[str, ...]]:
    """Original layer name -> path of its module in the parameter tree (BN: name + '_bn')."""
    paths: dict[str, tuple[str, ...]] = {}
    for block, layers, _ in ENCODER + DECODER:
        for layer in layers:
            paths[layer] = (block, layer)
    for layer, _, _ in FC:
        paths[layer] = ("fc", layer)
    paths["seg_score"] = ("seg_score",)
    return paths


class Deconv(nn.Module):
    """Stride-1 transposed convolution (Caffe "Deconvolution", torch ConvTranspose2d).

    The kernel is stored [kh, kw, in, out] with ``kernel[y, x, i, o] == torch_weight[i, o, y, x]``.
    A stride-1 transposed conv with padding p equals a correlation with the spatially flipped
    kernel over the input padded by ``k - 1 - p``; on a 1x1 input (fc6_deconv at 224) it is a
    plain matrix product, which is what we run then.
    """

    features: int
    kernel_size: int
    padding: int
    dtype: Any = jnp.float32
    kernel_init: Initializer = DECODER_INIT
    conv_impl: str = "direct"  # see winograd.use_winograd

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if x.shape[1] == 1 and x.shape[2] == 1 and self.padding == 0:
            # [B, 1, 1, I] x [k, k, I, O] -> [B, k, k, O]
            y = jnp.einsum("bi,yxio->byxo", x[:, 0, 0, :], kernel)
        elif winograd.use_winograd(self.conv_impl, k, self.padding, cin):
            y = winograd.conv3x3_same(x, kernel[::-1, ::-1])
        else:
            pad = k - 1 - self.padding
            y = jax.lax.conv_general_dilated(
                x,
                kernel[::-1, ::-1],
                window_strides=(1, 1),
                padding=((pad, pad), (pad, pad)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        return y + bias.astype(self.dtype)


class Conv(nn.Module):
    """Stride-1 convolution with nn.Conv's parameters (kernel [kh, kw, in, out], bias [out]).

    Where the convolution is a matrix product it runs as one: a "VALID" kernel as large as its
    input (fc6 at 224: 7x7 on pool5's 7x7) and 1x1 kernels (fc7, classifiers). XLA's CPU
    convolution gradients are several times slower than the same dot products (benchmarks/NOTES.md).
    """

    features: int
    kernel_size: int
    padding: Any = "SAME"  # "VALID", "SAME" or ((top, bottom), (left, right))
    dtype: Any = jnp.float32
    kernel_init: Initializer = ENCODER_INIT
    conv_impl: str = "direct"  # see winograd.use_winograd

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        valid = isinstance(self.padding, str) and self.padding == "VALID"
        if k == 1 and (valid or self.padding == "SAME"):
            y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])  # [B, H, W, O]
        elif valid and x.shape[1] == k and x.shape[2] == k:
            y = (x.reshape(x.shape[0], -1) @ kernel.reshape(-1, self.features))[:, None, None, :]
        elif winograd.use_winograd(self.conv_impl, k, self.padding, cin):
            y = winograd.conv3x3_same(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        return y + bias.astype(self.dtype)


# The _Layers options a network passes on to every block (DeconvNet and FCN8s have them all).
LAYER_OPTIONS = ("dtype", "bn_momentum", "bn_epsilon", "bn_bias_init", "conv_impl")


def layer_options(network: nn.Module) -> dict[str, Any]:
    """{option: value} of LAYER_OPTIONS on a network module, for its blocks' constructors."""
    return {name: getattr(network, name) for name in LAYER_OPTIONS}


def model_kwargs(model_config) -> dict[str, Any]:
    """Constructor arguments that DeconvNet and FCN8s share, from a ``config.model``."""
    return dict(
        num_classes=model_config.num_classes,
        width_multiplier=model_config.width_multiplier,
        dtype=jnp.dtype(model_config.dtype),
        remat=model_config.remat,
        bn_momentum=model_config.bn_momentum,
        bn_epsilon=model_config.bn_epsilon,
        bn_bias_init=model_config.bn_bias_init,
        conv_impl=model_config.get("conv_impl") or "auto",
    )


class _Layers(nn.Module):
    """Shared options of the blocks below."""

    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_bias_init: float = 0.001
    conv_impl: str = "direct"

    def bn_relu(self, x: jax.Array, name: str, train: bool) -> jax.Array:
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            bias_init=nn.initializers.constant(self.bn_bias_init),
            name=name + "_bn",
        )(x)
        return nn.relu(x)

    def conv(self, x, name, features, kernel, padding, init=ENCODER_INIT) -> jax.Array:
        return Conv(
            features,
            kernel,
            padding,
            dtype=self.dtype,
            kernel_init=init,
            conv_impl=self.conv_impl,
            name=name,
        )(x)


class EncoderBlock(_Layers):
    """convN_1..convN_k (3x3 pad 1) + BN + ReLU, then 2x2/2 max pooling with switches."""

    layers: Sequence[str] = ()
    features: Sequence[int] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        for name, feats in zip(self.layers, self.features):
            x = self.bn_relu(self.conv(x, name, feats, 3, ((1, 1), (1, 1))), name, train)
        return max_pool_with_switches(x, 2, 2)


class FCBlock(_Layers):
    """fc6 (7x7 valid conv), fc7 (1x1 conv), fc6_deconv (7x7 transposed conv), each + BN + ReLU."""

    features: Sequence[int] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        f6, f7, fd = self.features
        x = self.bn_relu(self.conv(x, "fc6", f6, 7, "VALID"), "fc6", train)
        x = self.bn_relu(self.conv(x, "fc7", f7, 1, "VALID"), "fc7", train)
        x = Deconv(fd, 7, 0, dtype=self.dtype, name="fc6_deconv")(x)
        return self.bn_relu(x, "fc6_deconv", train)


class DecoderBlock(_Layers):
    """Unpooling with the matching pool switches, then deconvN_* (3x3 pad 1) + BN + ReLU."""

    layers: Sequence[str] = ()
    features: Sequence[int] = ()
    output_hw: tuple[int, int] = (0, 0)
    unpool_impl: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, switches: jax.Array, train: bool) -> jax.Array:
        x = max_unpool(x, switches, self.output_hw, impl=self.unpool_impl)
        for name, feats in zip(self.layers, self.features):
            x = Deconv(feats, 3, 1, dtype=self.dtype, conv_impl=self.conv_impl, name=name)(x)
            x = self.bn_relu(x, name, train)
        return x


class DeconvNet(nn.Module):
    """DeconvNet for semantic segmentation.

    Attributes:
      num_classes: output classes (21 for VOC: background + 20).
      width_multiplier: scales every channel count except the classifier's (tiny models).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters are always float32.
      remat: rematerialise each block in the backward pass (jax.checkpoint) to save memory.
      bn_momentum / bn_epsilon: BatchNorm running-average momentum (flax convention:
        new = momentum * old + (1 - momentum) * batch) and epsilon.
      bn_bias_init: initial BN shift (the release uses 0.001).
      unpool_impl: "scatter" or "window" (None: pooling.DEFAULT_UNPOOL).
      conv_impl: 3x3 layers as "direct" convolutions, "winograd" F(2x2, 3x3), or "auto"
        (on CPU, Winograd where the input has >= 256 channels); see models/winograd.py.
    """

    num_classes: int = 21
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    remat: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_bias_init: float = 0.001
    unpool_impl: str | None = None
    conv_impl: str = "auto"

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
        common = layer_options(self)
        wm = self.width_multiplier
        enc_cls = nn.remat(EncoderBlock, static_argnums=(2,)) if self.remat else EncoderBlock
        fc_cls = nn.remat(FCBlock, static_argnums=(2,)) if self.remat else FCBlock
        dec_cls = nn.remat(DecoderBlock, static_argnums=(3,)) if self.remat else DecoderBlock

        x = x.astype(self.dtype)
        skips = []  # (switches, pre-pool H, W) per block, shallowest first
        for block, layers, feats in ENCODER:
            hw = (x.shape[1], x.shape[2])
            x, switches = enc_cls(
                layers=layers, features=[scaled(f, wm) for f in feats], name=block, **common
            )(x, train)
            skips.append((switches, hw))
        x = fc_cls(features=[scaled(c, wm) for _, _, c in FC], name="fc", **common)(x, train)
        for (block, layers, feats), (switches, hw) in zip(DECODER, reversed(skips)):
            x = dec_cls(
                layers=layers,
                features=[scaled(f, wm) for f in feats],
                output_hw=hw,
                unpool_impl=self.unpool_impl,
                name=block,
                **common,
            )(x, switches, train)
        x = Conv(
            self.num_classes,
            1,
            "VALID",
            dtype=self.dtype,
            kernel_init=DECODER_INIT,
            name="seg_score",
        )(x)
        # float32 logits (the loss is computed in float32), float64 when asked for (parity tests).
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))


def build_model(model_config) -> DeconvNet:
    """Builds the network from a ``config.model`` ConfigDict (see configs/default.py)."""
    name = model_config.get("name", "deconvnet")
    if name != "deconvnet":
        if name == "fcn8s":
            from deconvnet_jax.models.fcn import build_fcn  # noqa: PLC0415

            return build_fcn(model_config)
        raise ValueError(f"unknown config.model.name {name!r} (expected 'deconvnet' or 'fcn8s')")
    return DeconvNet(
        **model_kwargs(model_config), unpool_impl=model_config.get("unpool_impl") or None
    )


def count_params(tree) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
