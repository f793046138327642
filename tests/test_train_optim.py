"""The release's optimiser: decay on kernels only, bias lr x2, step schedule, accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from deconvnet_jax import optim
from deconvnet_jax.train_lib import pixel_cross_entropy


def _params():
    return {
        "block1": {
            "conv1_1": {"kernel": jnp.ones((3, 3, 3, 4)), "bias": jnp.ones((4,))},
            "conv1_1_bn": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
        },
        "seg_score": {"kernel": jnp.ones((1, 1, 4, 21)), "bias": jnp.ones((21,))},
    }


def _config(**kw):
    c = default.get_config().optim
    c.accum_steps = 1
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_groups():
    labels = optim.param_groups(_params())
    assert labels["block1"]["conv1_1"] == {"kernel": "kernel", "bias": "bias"}
    assert labels["block1"]["conv1_1_bn"] == {"scale": "bn", "bias": "bn"}
    assert labels["seg_score"] == {"kernel": "kernel", "bias": "bias"}


def test_first_update_decay_and_bias_lr():
    cfg = _config(momentum=0.9, weight_decay=5e-4, lr=0.01, bias_lr_mult=2.0)
    params = _params()
    tx = optim.make_optimizer(cfg)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    u = jax.tree.map(lambda a: float(a.ravel()[0]), updates)
    # kernels and BN (the release): -lr * (g + wd * w); biases: -2 lr * g (no decay)
    np.testing.assert_allclose(
        u["block1"]["conv1_1"]["kernel"], -0.01 * (0.5 + 5e-4 * 1.0), rtol=1e-6
    )
    np.testing.assert_allclose(u["block1"]["conv1_1"]["bias"], -0.02 * 0.5, rtol=1e-6)
    for leaf in ("scale", "bias"):
        np.testing.assert_allclose(
            u["block1"]["conv1_1_bn"][leaf], -0.01 * (0.5 + 5e-4 * 1.0), rtol=1e-6
        )
    cfg.bn_weight_decay = False  # BN: -lr * g
    updates, _ = optim.make_optimizer(cfg).update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["block1"]["conv1_1_bn"]["scale"], -0.01 * 0.5, rtol=1e-6)


def test_momentum_matches_numpy_loop():
    cfg = _config(momentum=0.9, weight_decay=0.0, lr=0.1, bias_lr_mult=1.0, momentum_style="optax")
    params = {"m": {"kernel": jnp.zeros((2,))}}
    tx = optim.make_optimizer(cfg)
    state = tx.init(params)
    trace, p = np.zeros(2), np.zeros(2)
    for k in range(4):
        g = np.array([1.0, -2.0]) * (k + 1)
        upd, state = tx.update({"m": {"kernel": jnp.asarray(g)}}, state, params)
        params = optax.apply_updates(params, upd)
        trace = g + 0.9 * trace
        p = p - 0.1 * trace
    np.testing.assert_allclose(np.asarray(params["m"]["kernel"]), p, rtol=1e-6)


# (group, lr multiplier, decay multiplier) of the release (CAFFE.md): kernels 1 / 1, biases 2 / 0,
# BN scale and shift 1 / 1 (Caffe's defaults: the BN layers set none).
RELEASE_MULTS = {"kernel": (1.0, 1.0), "bias": (2.0, 0.0), "bn": (1.0, 1.0)}


def _random_tree(rng):
    """Random parameters with one leaf per group (float64), and the group of each flat leaf."""
    params = {
        "conv": {"kernel": rng.standard_normal((3, 3, 2, 4)), "bias": rng.standard_normal(4)},
        "conv_bn": {"scale": rng.uniform(0.5, 1.5, 4), "bias": rng.standard_normal(4)},
    }
    groups = {("conv", "kernel"): "kernel", ("conv", "bias"): "bias"}
    groups |= {("conv_bn", "scale"): "bn", ("conv_bn", "bias"): "bn"}
    return params, groups


def _run_optax(cfg, params, grads):
    """4 updates of make_optimizer(cfg) on the given gradients (float64), final params by path."""
    tx = optim.make_optimizer(cfg)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for g in grads:
        upd, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, upd)
    return {(a, b): np.asarray(v) for a, node in p.items() for b, v in node.items()}


def _schedule_cfg(**kw):
    # a step of the schedule at update 2 (of 0..3): lr 0.1, 0.1, 0.01, 0.01
    return _config(lr=0.1, gamma=0.1, decay_steps=(2,), schedule="step", weight_decay=0.05, **kw)


def test_caffe_momentum_with_a_schedule_step_matches_numpy_loop_per_group():
    rng = np.random.default_rng(0)
    params, groups = _random_tree(rng)
    grads = [jax.tree.map(lambda x: rng.standard_normal(x.shape), params) for _ in range(4)]
    cfg = _schedule_cfg(momentum=0.9, momentum_style="caffe", bias_lr_mult=2.0)
    with jax.enable_x64(True):
        got = _run_optax(cfg, params, grads)
        optax_style = _run_optax(_schedule_cfg(momentum=0.9, momentum_style="optax"), params, grads)
    lrs = [0.1, 0.1, 0.01, 0.01]
    for path, group in groups.items():
        lr_mult, decay_mult = RELEASE_MULTS[group]
        w, v = params[path[0]][path[1]].copy(), 0.0
        for t, g in enumerate(grads):  # Caffe's SGDSolver: lr inside the velocity
            v = 0.9 * v + lrs[t] * lr_mult * (g[path[0]][path[1]] + 0.05 * decay_mult * w)
            w = w - v
        np.testing.assert_allclose(got[path], w, rtol=1e-12, atol=1e-14, err_msg=str(path))
        # the optax style (lr outside the velocity) is measurably different after the step
        step = np.abs(w - params[path[0]][path[1]]).max()
        assert np.abs(optax_style[path] - w).max() > 0.05 * step, path


def test_adamw_matches_its_documented_formula_per_group():
    rng = np.random.default_rng(1)
    params, groups = _random_tree(rng)
    grads = [jax.tree.map(lambda x: rng.standard_normal(x.shape), params) for _ in range(4)]
    cfg = _schedule_cfg(name="adamw", bias_lr_mult=2.0)
    with jax.enable_x64(True):
        got = _run_optax(cfg, params, grads)
    lrs, b1, b2, eps = [0.1, 0.1, 0.01, 0.01], 0.9, 0.999, 1e-8  # optax.adamw's defaults
    for path, group in groups.items():
        lr_mult, decay_mult = RELEASE_MULTS[group]
        w, m, v = params[path[0]][path[1]].copy(), 0.0, 0.0
        for t, g in enumerate(grads):
            g = g[path[0]][path[1]]
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
            m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
            # decoupled: the decay is not in m, v; it is scaled by the lr (times the multiplier)
            w = w - lrs[t] * lr_mult * (m_hat / (np.sqrt(v_hat) + eps) + 0.05 * decay_mult * w)
        np.testing.assert_allclose(got[path], w, rtol=1e-12, atol=1e-14, err_msg=str(path))


def test_unknown_momentum_style_is_named():
    cfg = _config(momentum_style="nesterov")
    with pytest.raises(ValueError, match="momentum_style 'nesterov'"):
        optim.make_optimizer(cfg).init({"m": {"kernel": jnp.zeros(1)}})


def test_step_schedule():
    cfg = _config(lr=0.01, gamma=0.1, decay_steps=(3, 5))
    lrs = [float(optim.current_lr(cfg, s)) for s in range(7)]
    np.testing.assert_allclose(lrs, [0.01] * 3 + [0.001] * 2 + [0.0001] * 2, rtol=1e-6)


def test_cosine_schedule_with_linear_warmup():
    """optim.warmup_steps (the demo's): lr rises linearly from 0 to lr over the warm-up, then
    follows a half cosine to 0 at max(decay_steps) (a closed form, not optax's own)."""
    cfg = _config(lr=0.04, schedule="cosine", decay_steps=(10,), warmup_steps=4)
    got = [float(optim.current_lr(cfg, s)) for s in range(12)]
    want = [
        0.04 * s / 4 if s < 4 else 0.02 * (1 + np.cos(np.pi * min(s - 4, 6) / 6)) for s in range(12)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    cfg.warmup_steps = 0  # the plain cosine, from lr at update 0
    np.testing.assert_allclose(float(optim.current_lr(cfg, 0)), 0.04, rtol=1e-6)
    np.testing.assert_allclose(float(optim.current_lr(cfg, 5)), 0.02, rtol=1e-6)


def test_accumulation_applies_every_k():
    cfg = _config(momentum=0.0, weight_decay=0.0, lr=1.0, bias_lr_mult=1.0, accum_steps=4)
    cfg.momentum = 0.0
    params = {"m": {"kernel": jnp.zeros((1,))}}
    tx = optim.make_optimizer(cfg)
    state = tx.init(params)
    seen = []
    for g in (1.0, 2.0, 3.0, 6.0):
        upd, state = tx.update({"m": {"kernel": jnp.asarray([g])}}, state, params)
        seen.append(float(upd["m"]["kernel"][0]))
    assert seen[:3] == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(seen[3], -3.0)  # mean gradient of the 4 micro-batches


def test_loss_ignores_255_and_normalises_by_valid_pixels():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (2, 3, 4))
    labels[0, 0, :] = 255
    loss, count = pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    ref = -np.mean([logp[b, i, j, labels[b, i, j]] for b, i, j in zip(*np.nonzero(valid))])
    assert int(count) == valid.sum() == 20
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    loss_all_ignored, c = pixel_cross_entropy(jnp.asarray(logits), jnp.full((2, 3, 4), 255))
    assert float(loss_all_ignored) == 0.0 and int(c) == 0
