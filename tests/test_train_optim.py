"""The release's optimiser: decay on kernels only, bias lr x2, step schedule, accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
    # kernels: -lr * (g + wd * w); biases: -2 lr * g (no decay); BN: -lr * g (no decay)
    np.testing.assert_allclose(
        u["block1"]["conv1_1"]["kernel"], -0.01 * (0.5 + 5e-4 * 1.0), rtol=1e-6
    )
    np.testing.assert_allclose(u["block1"]["conv1_1"]["bias"], -0.02 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(u["block1"]["conv1_1_bn"]["scale"], -0.01 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(u["block1"]["conv1_1_bn"]["bias"], -0.01 * 0.5, rtol=1e-6)


def test_momentum_matches_numpy_loop():
    cfg = _config(momentum=0.9, weight_decay=0.0, lr=0.1, bias_lr_mult=1.0)
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


def test_step_schedule():
    cfg = _config(lr=0.01, gamma=0.1, decay_steps=(3, 5))
    lrs = [float(optim.current_lr(cfg, s)) for s in range(7)]
    np.testing.assert_allclose(lrs, [0.01] * 3 + [0.001] * 2 + [0.0001] * 2, rtol=1e-6)


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
