"""Winograd F(2x2, 3x3) convolution against a NumPy loop, PyTorch's conv2d / conv_transpose2d,
and the direct convolution inside the networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import random_variables

from deconvnet_jax.models import winograd
from deconvnet_jax.models.deconvnet import DeconvNet
from deconvnet_jax.models.fcn import FCN8s
from deconvnet_jax.models.layers import Deconv


def _numpy_correlation(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """3x3 correlation, stride 1, zero padding 1, NHWC x HWIO, as a float64 loop."""
    b, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, k.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("bhwc,co->bhwo", xp[:, dy : dy + h, dx : dx + w], k[dy, dx])
    return out


@pytest.mark.parametrize("shape", [(1, 4, 4, 1), (2, 7, 5, 3), (2, 9, 12, 8), (1, 1, 1, 2)])
def test_matches_numpy_loop(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.standard_normal((3, 3, shape[-1], 6)).astype(np.float32)
    got = np.asarray(winograd.conv3x3_same(jnp.asarray(x), jnp.asarray(k)))
    want = _numpy_correlation(x, k)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_exact_in_float64():
    rng = np.random.default_rng(1)
    x, k = rng.standard_normal((2, 11, 6, 4)), rng.standard_normal((3, 3, 4, 5))
    with jax.enable_x64(True):
        got = np.asarray(winograd.conv3x3_same(jnp.asarray(x), jnp.asarray(k)))
    np.testing.assert_allclose(got, _numpy_correlation(x, k), rtol=0, atol=1e-12)


def test_matches_torch_conv2d_and_gradients():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 10, 13, 5)).astype(np.float32)
    k = rng.standard_normal((3, 3, 5, 7)).astype(np.float32)
    r = rng.standard_normal((2, 10, 13, 7)).astype(np.float32)  # cotangent

    def loss(x, k):
        return jnp.sum(winograd.conv3x3_same(x, k) * r)

    gx, gk = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(k))

    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    tk = torch.tensor(k).permute(3, 2, 0, 1).contiguous().requires_grad_()  # OIHW
    ty = F.conv2d(tx, tk, padding=1)
    (ty * torch.tensor(r).permute(0, 3, 1, 2)).sum().backward()
    y = winograd.conv3x3_same(jnp.asarray(x), jnp.asarray(k))
    np.testing.assert_allclose(np.asarray(y), ty.detach().permute(0, 2, 3, 1).numpy(), atol=2e-5)
    np.testing.assert_allclose(np.asarray(gx), tx.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(gk), tk.grad.permute(2, 3, 1, 0).numpy(), atol=1e-4)


def test_deconv_layer_matches_torch_conv_transpose():
    """The decoder path: Deconv(3, pad 1) with conv_impl='winograd' == ConvTranspose2d."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 9, 4)).astype(np.float32)
    layer = Deconv(6, 3, 1, conv_impl="winograd")
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    kernel = np.asarray(variables["params"]["kernel"])  # [y, x, in, out] == torch [in, out, y, x]
    bias = np.asarray(variables["params"]["bias"])
    want = F.conv_transpose2d(
        torch.tensor(x).permute(0, 3, 1, 2),
        torch.tensor(kernel).permute(2, 3, 0, 1),
        torch.tensor(bias),
        padding=1,
    )
    got = layer.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(
        np.asarray(got), want.permute(0, 2, 3, 1).numpy(), atol=1e-5 * float(want.abs().max())
    )


def test_use_winograd_rules():
    assert winograd.use_winograd("winograd", 3, ((1, 1), (1, 1)), 8)
    assert winograd.use_winograd("winograd", 3, 1, 8)
    assert not winograd.use_winograd("winograd", 3, 0, 8)  # not pad 1
    assert not winograd.use_winograd("winograd", 7, "VALID", 512)  # fc6
    assert not winograd.use_winograd("winograd", 3, ((100, 100), (100, 100)), 3)  # FCN conv1_1
    assert not winograd.use_winograd("direct", 3, 1, 512)
    on_cpu = jax.default_backend() == "cpu"
    assert winograd.use_winograd("auto", 3, 1, winograd.AUTO_MIN_CHANNELS) == on_cpu
    assert not winograd.use_winograd("auto", 3, 1, winograd.AUTO_MIN_CHANNELS - 1)
    with pytest.raises(ValueError, match="'fast'"):
        winograd.use_winograd("fast", 3, 1, 8)


@pytest.mark.parametrize(
    "cls,hw,modes", [(DeconvNet, (224, 224), ("eval", "train")), (FCN8s, (36, 44), ("eval",))]
)
def test_networks_agree_with_direct(cls, hw, modes):
    """Same variables, every 3x3 layer Winograd vs direct: DeconvNet (encoder + decoder; eval
    and train-mode BN) and FCN-8s (any input size: a small one), in float64 so that near-tied
    pool switches cannot flip."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(4).standard_normal((2, *hw, 3)))
        direct = cls(width_multiplier=1 / 32, conv_impl="direct", dtype=jnp.float64)
        wino = direct.clone(conv_impl="winograd")
        variables = random_variables(direct, seed=4, dtype=np.float64, hw=hw)
        every = {"eval": dict(train=False), "train": dict(train=True, mutable=["batch_stats"])}
        for kw in (every[m] for m in modes):
            a = jax.jit(lambda v, m=direct: m.apply(v, x, **kw))(variables)
            b = jax.jit(lambda v, m=wino: m.apply(v, x, **kw))(variables)
            a, b = (a[0], b[0]) if kw["train"] else (a, b)
            scale = float(jnp.max(jnp.abs(a)))
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-9 * scale)
