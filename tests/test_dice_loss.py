"""train.dice_weight: the soft Dice term against a NumPy loop (value) and torch autograd
(gradient) in float64, its edge cases, the train step's total loss, and the config check."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import default
from deconvnet_jax import config_check, train_lib
from deconvnet_jax.data.voc import IGNORE_LABEL


def _loop_dice_loss(logits, labels):
    """The definition, pixel by pixel: per class present in the valid labels,
    dice = 2 sum(p * y) / (sum(p) + sum(y)); loss = 1 - mean dice."""
    num_classes = logits.shape[-1]
    inter = np.zeros(num_classes)
    psum = np.zeros(num_classes)
    ysum = np.zeros(num_classes)
    for idx in np.ndindex(labels.shape):
        y = labels[idx]
        if y == IGNORE_LABEL:
            continue
        z = logits[idx] - logits[idx].max()
        p = np.exp(z) / np.exp(z).sum()
        psum += p
        ysum[y] += 1
        inter[y] += p[y]
    present = [c for c in range(num_classes) if ysum[c] > 0]
    if not present:
        return 0.0
    return 1.0 - np.mean([2 * inter[c] / (psum[c] + ysum[c]) for c in present])


def _batch(seed, num_classes=5, shape=(2, 6, 7)):
    rng = np.random.default_rng(seed)
    logits = 3 * rng.normal(size=shape + (num_classes,))
    labels = rng.integers(0, num_classes - 1, size=shape)  # the last class never occurs
    labels[rng.random(shape) < 0.25] = IGNORE_LABEL
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_dice_value_matches_loop(seed):
    logits, labels = _batch(seed)
    with jax.enable_x64(True):
        loss = train_lib.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(loss), _loop_dice_loss(logits, labels), rtol=1e-12)


def test_dice_gradient_matches_torch():
    logits, labels = _batch(2)
    with jax.enable_x64(True):
        grad = jax.grad(train_lib.soft_dice_loss)(jnp.asarray(logits), jnp.asarray(labels))
    t = torch.tensor(logits, requires_grad=True)
    valid = torch.from_numpy(labels != IGNORE_LABEL)
    p = torch.softmax(t, -1) * valid[..., None]
    y = torch.nn.functional.one_hot(
        torch.from_numpy(np.where(labels == IGNORE_LABEL, 0, labels)), logits.shape[-1]
    ).double() * valid[..., None]
    inter, truth, psum = (p * y).sum((0, 1, 2)), y.sum((0, 1, 2)), p.sum((0, 1, 2))
    present = truth > 0
    loss = 1 - (2 * inter[present] / (psum[present] + truth[present])).mean()
    loss.backward()
    np.testing.assert_allclose(np.asarray(grad), t.grad.numpy(), rtol=1e-9, atol=1e-15)


def test_dice_edge_cases():
    labels = jnp.full((1, 3, 3), IGNORE_LABEL)
    value, grad = jax.value_and_grad(train_lib.soft_dice_loss)(jnp.ones((1, 3, 3, 2)), labels)
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)
    labels = np.array([[[0, 1], [1, 2]]])
    perfect = 50.0 * jax.nn.one_hot(labels, 4)  # softmax ~ one-hot: dice 1 for every class
    assert float(train_lib.soft_dice_loss(perfect, jnp.asarray(labels))) < 1e-6
    wrong = 50.0 * jax.nn.one_hot((labels + 1) % 3, 4)  # every pixel on another class: dice 0
    np.testing.assert_allclose(float(train_lib.soft_dice_loss(wrong, jnp.asarray(labels))), 1.0)


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Conv(4, (1, 1))(x)


def test_train_step_loss_is_cross_entropy_plus_weighted_dice():
    rng = np.random.default_rng(3)
    batch = {
        "image": jnp.asarray(rng.normal(size=(2, 5, 5, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 4, size=(2, 5, 5))),
    }
    model, tx = _Linear(), optax.sgd(0.1)
    state = train_lib.create_train_state(model, tx, 0, (1, 5, 5, 3))
    logits = model.apply({"params": state.params}, batch["image"])
    ce, _ = train_lib.pixel_cross_entropy(logits, batch["label"])
    dice = train_lib.soft_dice_loss(logits, batch["label"])
    for weight in (0.0, 0.7):
        _, metrics = train_lib.make_train_step(model, tx, dice_weight=weight)(state, batch)
        np.testing.assert_allclose(float(metrics["loss"]), float(ce + weight * dice), rtol=1e-5)


def test_negative_dice_weight_is_one_line():
    config = default.get_config()
    config.data.voc_root = "/x"
    config.train.dice_weight = -1.0
    with pytest.raises(config_check.ConfigError) as e:
        config_check.check_train_config(config)
    assert "config.train.dice_weight=-1.0" in str(e.value) and "\n" not in str(e.value)
