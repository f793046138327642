"""Building blocks shared by the networks: the stride-1 Conv / Deconv layers, the VGG16 encoder and
fc tables, channel scaling, initialisers, and the conv / norm factories a network hands its blocks.

This module imports nothing from the networks (models/deconvnet.py, models/fcn.py import it; the
registry in models/__init__.py imports them).

A network builds its factories once per call, as flax's examples/imagenet does::

    conv, deconv, norm = factories(self, train)   # functools.partial of Conv, Deconv, BatchNorm
    x = conv_bn_relu(x, conv, norm, "conv1_1", 64, 3, 1)

so blocks receive every option (dtype, param_dtype, BN settings, conv_impl, conv_grad_impl)
through the partials instead of repeating them as attributes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from deconvnet_jax.models import conv_grad, winograd

# (block name, layer names, output channels at width 1) -- PAPER.md's table.
ENCODER: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = (
    ("block1", ("conv1_1", "conv1_2"), (64, 64)),
    ("block2", ("conv2_1", "conv2_2"), (128, 128)),
    ("block3", ("conv3_1", "conv3_2", "conv3_3"), (256, 256, 256)),
    ("block4", ("conv4_1", "conv4_2", "conv4_3"), (512, 512, 512)),
    ("block5", ("conv5_1", "conv5_2", "conv5_3"), (512, 512, 512)),
)
FC: tuple[tuple[str, int, int], ...] = (  # (layer, kernel, channels): fc6, fc7 as convolutions
    ("fc6", 7, 4096),
    ("fc7", 1, 4096),
)

Initializer = Callable[..., jax.Array]
ModuleDef = Any  # a functools.partial of a flax Module class
ENCODER_INIT: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
DECODER_INIT: Initializer = nn.initializers.normal(0.01)  # release: Gaussian std 0.01, bias 0
# DeconvNet's decoder_init choices: the release's, or the encoder's He-normal (configs/demo.py).
DECODER_INITS: dict[str, Initializer] = {"release": DECODER_INIT, "he": ENCODER_INIT}


def scaled(channels: int, width_multiplier: float) -> int:
    """Channel count at a width multiplier (at least 1)."""
    return max(1, int(round(channels * width_multiplier)))


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
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = DECODER_INIT
    use_bias: bool = True
    conv_impl: str = "direct"  # see winograd.use_winograd
    conv_grad_impl: str = "xla"  # 3x3 kernel gradient: see conv_grad.resolve

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (k, k, cin, self.features), self.param_dtype
        )
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if x.shape[1] == 1 and x.shape[2] == 1 and self.padding == 0:
            # [B, 1, 1, I] x [k, k, I, O] -> [B, k, k, O]
            y = jnp.einsum("bi,yxio->byxo", x[:, 0, 0, :], kernel)
        elif winograd.use_winograd(self.conv_impl, k, self.padding, cin):
            y = winograd.conv3x3_same(x, kernel[::-1, ::-1])
        else:
            pad = k - 1 - self.padding
            y = _correlate(x, kernel[::-1, ::-1], ((pad, pad), (pad, pad)), self.conv_grad_impl)
        return _add_bias(self, y)


class Conv(nn.Module):
    """Stride-1 convolution with nn.Conv's parameters (kernel [kh, kw, in, out], bias [out]).

    Where the convolution is a matrix product it runs as one: a "VALID" kernel as large as its
    input (fc6 at 224: 7x7 on pool5's 7x7) and 1x1 kernels (fc7, classifiers). XLA's CPU
    convolution gradients are several times slower than the same dot products (benchmarks/NOTES.md).
    """

    features: int
    kernel_size: int
    padding: Any = "SAME"  # "VALID", "SAME", an int, or ((top, bottom), (left, right))
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = ENCODER_INIT
    use_bias: bool = True
    conv_impl: str = "direct"  # see winograd.use_winograd
    conv_grad_impl: str = "xla"  # 3x3 kernel gradient: see conv_grad.resolve

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (k, k, cin, self.features), self.param_dtype
        )
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        padding = self.padding
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        valid = isinstance(padding, str) and padding == "VALID"
        if k == 1 and (valid or padding == "SAME"):
            y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])  # [B, H, W, O]
        elif valid and x.shape[1] == k and x.shape[2] == k:
            y = (x.reshape(x.shape[0], -1) @ kernel.reshape(-1, self.features))[:, None, None, :]
        elif winograd.use_winograd(self.conv_impl, k, padding, cin):
            y = winograd.conv3x3_same(x, kernel)
        else:
            y = _correlate(x, kernel, padding, self.conv_grad_impl)
        return _add_bias(self, y)


def _correlate(x: jax.Array, kernel: jax.Array, padding, grad_impl: str) -> jax.Array:
    """Stride-1 correlation; 3x3 kernels get conv_grad's kernel gradient unless it resolves to
    XLA's own."""
    explicit = conv_grad.explicit_padding(padding, kernel.shape[0])
    if (
        kernel.shape[:2] == (3, 3)
        and explicit is not None
        and conv_grad.resolve(grad_impl) != "xla"
    ):
        return conv_grad.conv3x3(x, kernel, explicit, grad_impl)
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _add_bias(layer: nn.Module, y: jax.Array) -> jax.Array:
    """y + the layer's "bias" parameter [features] (zeros at init), when it has one."""
    if not layer.use_bias:
        return y
    bias = layer.param("bias", nn.initializers.zeros, (layer.features,), layer.param_dtype)
    return y + bias.astype(layer.dtype)


def factories(network: nn.Module, train: bool) -> tuple[ModuleDef, ModuleDef, ModuleDef]:
    """The conv, deconv and BatchNorm factories of a network's options (for its blocks).

    Args:
      network: a module with dtype, param_dtype, conv_impl, conv_grad_impl, bn_momentum,
        bn_epsilon and bn_bias_init attributes (DeconvNet, FCN8s).
      train: BN normalises with the batch statistics (and updates the running averages) when
        True, with the running averages when False.
    Returns:
      (conv, deconv, norm): ``functools.partial`` of Conv, Deconv and nn.BatchNorm.
    """
    common = dict(dtype=network.dtype, param_dtype=network.param_dtype)
    impls = dict(conv_impl=network.conv_impl, conv_grad_impl=network.conv_grad_impl)
    conv = functools.partial(Conv, **impls, **common)
    deconv = functools.partial(Deconv, **impls, **common)
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=network.bn_momentum,
        epsilon=network.bn_epsilon,
        bias_init=nn.initializers.constant(network.bn_bias_init),
        # flax keeps BN statistics in float32; a float64 network (exactness checks) keeps them
        # in float64 too, so its train step stays float64 end to end.
        force_float32_reductions=jnp.dtype(network.param_dtype) != jnp.float64,
        **common,
    )
    return conv, deconv, norm


def bn_relu(x: jax.Array, norm: ModuleDef, name: str) -> jax.Array:
    """BatchNorm named ``<name>_bn`` (the layer it follows + "_bn"), then ReLU."""
    return nn.relu(norm(name=name + "_bn")(x))


def conv_bn_relu(
    x: jax.Array, conv: ModuleDef, norm: ModuleDef, name: str, features: int, kernel: int, padding
) -> jax.Array:
    """``name`` (a Conv from the factory) + ``name_bn`` + ReLU."""
    return bn_relu(conv(features, kernel, padding, name=name)(x), norm, name)


def model_kwargs(model_config) -> dict[str, Any]:
    """Constructor arguments that DeconvNet and FCN8s share, from a ``config.model``."""
    return dict(
        num_classes=model_config.num_classes,
        width_multiplier=model_config.width_multiplier,
        dtype=jnp.dtype(model_config.dtype),
        param_dtype=jnp.dtype(model_config.param_dtype),
        remat=model_config.remat,
        bn_momentum=model_config.bn_momentum,
        bn_epsilon=model_config.bn_epsilon,
        bn_bias_init=model_config.bn_bias_init,
        conv_impl=model_config.conv_impl,
        conv_grad_impl=model_config.conv_grad_impl,
    )
