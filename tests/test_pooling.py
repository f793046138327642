"""max_pool_with_switches / max_unpool against PyTorch's max_pool2d / max_unpool2d."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.test_util import check_grads

from deconvnet_jax.models.pooling import UNPOOL_IMPLS, max_pool_with_switches, max_unpool


def _torch_pool(x_nhwc: np.ndarray, window=2, stride=2):
    t = torch.tensor(x_nhwc).permute(0, 3, 1, 2)
    p, i = F.max_pool2d(t, window, stride, return_indices=True)
    return p, i


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).detach().numpy()


SHAPES = [(2, 7, 7, 3), (3, 8, 6, 5), (1, 9, 12, 2), (2, 32, 32, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_pool_matches_torch(shape, ties):
    rng = np.random.default_rng(sum(shape) + ties)
    if ties:  # many exact ties inside windows: the first maximum (row-major) must win
        x = rng.integers(0, 3, size=shape).astype(np.float32)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    pooled, switches = max_pool_with_switches(jnp.asarray(x))
    tp, ti = _torch_pool(x)
    np.testing.assert_array_equal(np.asarray(pooled), _nhwc(tp))
    np.testing.assert_array_equal(np.asarray(switches), _nhwc(ti))


def test_pool_constant_plane_takes_first_cell():
    x = np.ones((1, 4, 4, 1), np.float32)
    _, switches = max_pool_with_switches(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(switches)[0, :, :, 0], [[0, 2], [8, 10]])


@pytest.mark.parametrize("window,stride", [(3, 2), (3, 3)])
def test_pool_general_window_matches_torch(window, stride):
    x = np.random.default_rng(1).integers(0, 4, size=(2, 11, 9, 3)).astype(np.float32)
    pooled, switches = max_pool_with_switches(jnp.asarray(x), window, stride)
    tp, ti = _torch_pool(x, window, stride)
    np.testing.assert_array_equal(np.asarray(pooled), _nhwc(tp))
    np.testing.assert_array_equal(np.asarray(switches), _nhwc(ti))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", UNPOOL_IMPLS)
def test_unpool_matches_torch(shape, impl):
    x = np.random.default_rng(7).integers(-2, 3, size=shape).astype(np.float32)
    pooled, switches = max_pool_with_switches(jnp.asarray(x))
    out = jax.jit(max_unpool, static_argnums=(2, 3))(pooled, switches, shape[1:3], impl)
    tp, ti = _torch_pool(x)
    ref = F.max_unpool2d(tp, ti, 2, 2, output_size=shape[1:3])
    assert out.shape == shape
    np.testing.assert_array_equal(np.asarray(out), _nhwc(ref))


def test_odd_size_round_trip_7_3_7():
    x = np.arange(49, dtype=np.float32).reshape(1, 7, 7, 1)
    pooled, switches = max_pool_with_switches(jnp.asarray(x))
    assert pooled.shape == (1, 3, 3, 1)
    for impl in UNPOOL_IMPLS:
        out = np.asarray(max_unpool(pooled, switches, (7, 7), impl=impl))[0, :, :, 0]
        expected = np.zeros((7, 7), np.float32)
        for r in (1, 3, 5):  # maxima of the 2x2 windows of an increasing ramp: bottom-right cells
            for c in (1, 3, 5):
                expected[r, c] = r * 7 + c
        np.testing.assert_array_equal(out, expected)


def test_impls_bit_identical_forward_and_backward():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 14, 10, 6)).astype(np.float32))
    g = jnp.asarray(np.random.default_rng(4).standard_normal((2, 14, 10, 6)).astype(np.float32))
    pooled, switches = max_pool_with_switches(x)

    def loss(v, impl):
        return jnp.sum(max_unpool(v, switches, (14, 10), impl=impl) * g)

    outs = [np.asarray(max_unpool(pooled, switches, (14, 10), impl=i)) for i in UNPOOL_IMPLS]
    grads = [np.asarray(jax.grad(loss)(pooled, i)) for i in UNPOOL_IMPLS]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("impl", UNPOOL_IMPLS)
def test_unpool_gradients(impl):
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 6, 8, 3)).astype(np.float32))
    pooled, switches = max_pool_with_switches(x)
    check_grads(
        lambda v: max_unpool(v, switches, (6, 8), impl=impl), (pooled,), order=2, modes=("rev",)
    )
    # The backward of unpooling is a gather of the upstream gradient at the switches.
    g = np.random.default_rng(6).standard_normal((2, 6, 8, 3)).astype(np.float32)
    _, vjp = jax.vjp(lambda v: max_unpool(v, switches, (6, 8), impl=impl), pooled)
    (gx,) = vjp(jnp.asarray(g))
    gflat = g.transpose(0, 3, 1, 2).reshape(2, 3, -1)
    sflat = np.asarray(switches).transpose(0, 3, 1, 2).reshape(2, 3, -1)
    ref = np.take_along_axis(gflat, sflat, axis=2).reshape(2, 3, 3, 4).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(gx), ref)


@pytest.mark.parametrize("impl", UNPOOL_IMPLS)
def test_pool_unpool_grad_matches_torch(impl):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 10, 12, 3)).astype(np.float32)
    w = rng.standard_normal((2, 10, 12, 3)).astype(np.float32)

    def f(v):
        p, s = max_pool_with_switches(v)
        return jnp.sum(max_unpool(p * p, s, (10, 12), impl=impl) * w)

    gj = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x)))
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
    p, i = F.max_pool2d(xt, 2, 2, return_indices=True)
    y = F.max_unpool2d(p * p, i, 2, 2, output_size=(10, 12))
    (y * torch.tensor(w).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(gj, _nhwc(xt.grad), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", UNPOOL_IMPLS)
def test_unpool_vmap_equals_loop(impl):
    x = jnp.asarray(np.random.default_rng(9).standard_normal((3, 2, 8, 8, 2)).astype(np.float32))
    pooled, switches = jax.vmap(max_pool_with_switches)(x)
    vm = jax.vmap(lambda p, s: max_unpool(p, s, (8, 8), impl=impl))(pooled, switches)
    loop = jnp.stack([max_unpool(pooled[i], switches[i], (8, 8), impl=impl) for i in range(3)])
    np.testing.assert_array_equal(np.asarray(vm), np.asarray(loop))
    gv = jax.grad(
        lambda p: jnp.sum(
            jax.vmap(lambda a, s: max_unpool(a, s, (8, 8), impl=impl))(p, switches) ** 2
        )
    )(pooled)
    np.testing.assert_allclose(np.asarray(gv), 2 * np.asarray(pooled), rtol=1e-6)


def test_unpool_bad_arguments():
    p = jnp.zeros((1, 2, 2, 1))
    s = jnp.zeros((1, 2, 2, 1), jnp.int32)
    with pytest.raises(ValueError, match="differ"):
        max_unpool(p, jnp.zeros((1, 2, 3, 1), jnp.int32), (4, 4))
    with pytest.raises(ValueError, match="unknown unpool impl"):
        max_unpool(p, s, (4, 4), impl="nope")
    with pytest.raises(ValueError, match="output_hw"):
        max_unpool(p, s, (9, 9), impl="window")
    with pytest.raises(ValueError, match="expects"):
        max_pool_with_switches(jnp.zeros((4, 4)))
