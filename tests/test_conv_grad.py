"""The 3x3 custom VJP (models/conv_grad.py): kernel, input and bias gradients equal jax.grad of
lax.conv_general_dilated and torch autograd in float64, for the encoder's and the decoder's
(transposed) layers, SAME / VALID / asymmetric padding and odd sizes; a DeconvNet's parameter
gradient is the same with either kernel-gradient implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from deconvnet_jax.models import conv_grad
from deconvnet_jax.models.deconvnet import DeconvNet
from deconvnet_jax.models.layers import Conv, Deconv
from tests.nets import random_variables

FAST = ("patches", "shifted")
PADDINGS = [((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (1, 2))]


def _arrays(shape_x, cin, cout, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape_x)
    kernel = rng.standard_normal((3, 3, cin, cout))
    return x, kernel, rng


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("padding", PADDINGS)
def test_conv3x3_grads_equal_lax(impl, padding):
    """d/dx and d/dK of <conv3x3(x, K), w> == jax.grad through lax.conv_general_dilated
    (odd 7x9 input, B=2, C=3 -> O=5), and the forward is unchanged."""
    with jax.enable_x64(True):
        x, kernel, rng = _arrays((2, 7, 9, 3), 3, 5)
        dn = ("NHWC", "HWIO", "NHWC")

        def ref(x_, k_):
            return jax.lax.conv_general_dilated(x_, k_, (1, 1), padding, dimension_numbers=dn)

        out_shape = jax.eval_shape(ref, x, kernel).shape
        w = jnp.asarray(rng.standard_normal(out_shape))
        want = jax.grad(lambda a, b: jnp.sum(ref(a, b) * w), (0, 1))(x, kernel)
        fast = lambda a, b: jnp.sum(conv_grad.conv3x3(a, b, padding, impl) * w)  # noqa: E731
        got = jax.grad(fast, (0, 1))(x, kernel)
        np.testing.assert_allclose(conv_grad.conv3x3(x, kernel, padding, impl), ref(x, kernel))
        for g, r in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-12, atol=1e-12)


def test_patches_chunks_rows(monkeypatch):
    """Chunking the im2col over output rows (a small PATCH_CHUNK_BYTES: 1 row per chunk) gives
    the same kernel gradient as the shifted-product form."""
    with jax.enable_x64(True):
        x, _, rng = _arrays((1, 5, 6, 2), 2, 3, seed=1)
        g = rng.standard_normal((1, 5, 6, 3))
        monkeypatch.setattr(conv_grad, "PATCH_CHUNK_BYTES", 1)
        pad = ((1, 1), (1, 1))
        a = conv_grad.kernel_grad_patches(jnp.asarray(x), jnp.asarray(g), pad)
        b = conv_grad.kernel_grad_shifted(jnp.asarray(x), jnp.asarray(g), pad)
        loop = np.zeros((3, 3, 2, 3))  # NumPy loop reference
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        for i in range(3):
            for j in range(3):
                loop[i, j] = np.einsum("bhwc,bhwo->co", xp[:, i : i + 5, j : j + 6], g)
        np.testing.assert_allclose(np.asarray(a), loop, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(b), loop, rtol=1e-12)


def _torch_grads(x, kernel, bias, w, transposed, padding):
    """(dx, dK as HWIO, db) of <layer(x), w> by torch autograd (NCHW), float64."""
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    if transposed:  # ConvTranspose2d weight [in, out, kh, kw]
        kt = torch.tensor(kernel.transpose(2, 3, 0, 1), requires_grad=True)
    else:  # Conv2d weight [out, in, kh, kw]
        kt = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(bias, requires_grad=True)
    op = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    y = op(xt, kt, bt, padding=padding)
    (y * torch.tensor(w.transpose(0, 3, 1, 2))).sum().backward()
    dk = kt.grad.numpy()
    dk = dk.transpose(2, 3, 0, 1) if transposed else dk.transpose(2, 3, 1, 0)
    return xt.grad.numpy().transpose(0, 2, 3, 1), dk, bt.grad.numpy()


@pytest.mark.parametrize("impl", ("xla",) + FAST)
@pytest.mark.parametrize(
    "cls,padding", [(Conv, "SAME"), (Conv, "VALID"), (Conv, 1), (Deconv, 1), (Deconv, 0)]
)
def test_layer_grads_equal_torch(impl, cls, padding):
    """Conv (encoder: SAME / VALID / int) and Deconv (decoder's transposed conv, pad 1 and 0)
    with conv_grad_impl=impl: input, kernel and bias gradients == torch conv2d /
    conv_transpose2d autograd on a 2x7x9x3 input, 4 outputs."""
    with jax.enable_x64(True):
        layer = cls(4, 3, padding, conv_grad_impl=impl, dtype=jnp.float64, param_dtype=jnp.float64)
        x, kernel, rng = _arrays((2, 7, 9, 3), 3, 4, seed=2)
        bias = rng.standard_normal(4)
        params = {"params": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
        w = rng.standard_normal(jax.eval_shape(layer.apply, params, x).shape)
        loss = lambda p, x_: jnp.sum(layer.apply(p, x_) * w)  # noqa: E731
        gp, gx = jax.grad(loss, (0, 1))(params, jnp.asarray(x))
        tpad = padding if isinstance(padding, int) else (1 if padding == "SAME" else 0)
        want = _torch_grads(x, kernel, bias, w, cls is Deconv, tpad)
        got = (gx, gp["params"]["kernel"], gp["params"]["bias"])
        for g, r in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), r, rtol=1e-10, atol=1e-10)


def test_resolve():
    """auto -> xla (the measured rule); explicit names pass; a bad name names itself."""
    assert conv_grad.resolve("auto") == "xla"
    assert conv_grad.resolve("shifted") == "shifted"
    with pytest.raises(ValueError, match="'fast'"):
        conv_grad.resolve("fast")
    assert conv_grad.explicit_padding("SAME", 3) == ((1, 1), (1, 1))
    assert conv_grad.explicit_padding(0, 3) == ((0, 0), (0, 0))


def test_deconvnet_train_grad_patches_equals_xla():
    """A 1/32-width DeconvNet train-mode (batch-statistics BN) cross-entropy: every parameter
    gradient with conv_grad_impl=patches equals conv_grad_impl=xla, float64, relative 1e-9."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        x = jnp.asarray(rng.standard_normal((2, 224, 224, 3)))
        labels = jnp.asarray(rng.integers(0, 21, (2, 224, 224)))
        xla = DeconvNet(width_multiplier=1 / 32, conv_impl="direct", conv_grad_impl="xla",
                        dtype=jnp.float64, param_dtype=jnp.float64)  # fmt: skip
        variables = random_variables(xla, seed=5, dtype=np.float64)

        def grads(model):
            def loss(params):
                v = dict(variables, params=params)
                logits, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

            return jax.jit(jax.grad(loss))(variables["params"])

        a, b = grads(xla), grads(xla.clone(conv_grad_impl="patches"))
        for (path, ga), gb in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b)):
            scale = float(jnp.max(jnp.abs(ga))) or 1.0
            np.testing.assert_allclose(
                np.asarray(gb), np.asarray(ga), rtol=0, atol=1e-9 * scale, err_msg=str(path)
            )
