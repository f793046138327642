"""Training state, the masked pixel loss, and the pure train / eval steps."""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from deconvnet_jax.metrics import IGNORE_LABEL, confusion_matrix


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data-iterator position."""

    step: jax.Array  # micro-steps taken (int32 scalar)
    params: Any
    batch_stats: Any
    opt_state: Any


def pixel_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    ignore_label: int = IGNORE_LABEL,
    class_weights: jax.Array | None = None,
):
    """Softmax cross-entropy per pixel, ignoring `ignore_label`, averaged over valid pixels.

    Args:
      logits: [B, H, W, C] float; labels: [B, H, W] int.
      class_weights: optional [C] weight per true class; the loss is then the weighted mean
        sum(w[y] * loss) / sum(w[y]) over valid pixels (torch's CrossEntropyLoss(weight=...)).
    Returns:
      (mean loss over valid pixels (0 when there are none), number of valid pixels).
    """
    valid = labels != ignore_label
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    # float32 at least (bfloat16 logits), float64 for a float64 network (exactness checks)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    count = valid.sum()
    if class_weights is None:
        return jnp.where(valid, losses, 0.0).sum() / jnp.maximum(count, 1), count
    w = jnp.where(valid, jnp.asarray(class_weights, losses.dtype)[safe], 0.0)
    total = w.sum()
    return (w * losses).sum() / jnp.where(total > 0, total, 1.0), count


def soft_dice_loss(logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL):
    """1 - mean soft Dice over the classes present in the batch's labels (batch-level Dice).

    dice(c) = 2 sum(p_c y_c) / (sum(p_c) + sum(y_c)) over the valid pixels of the whole batch,
    p = softmax(logits), y = one-hot labels. 0 when no pixel is valid. The gradient is written
    out (custom VJP): left to autodiff, XLA:CPU recomputes the softmax in every per-class
    reduction and the term costs 4x the cross-entropy (benchmarks/NOTES.md).
    """
    valid = labels != ignore_label
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return _soft_dice(logits, valid, jnp.where(valid, labels, 0).astype(jnp.int32))


def _soft_dice_parts(logits, valid, labels):
    num_classes = logits.shape[-1]
    p = jax.nn.softmax(logits, axis=-1)  # materialised once; the reductions below read it
    v = valid.astype(p.dtype)
    flat_p, flat_v, flat_y = p.reshape(-1, num_classes), v.reshape(-1), labels.reshape(-1)
    p_true = jnp.take_along_axis(flat_p, flat_y[:, None], 1)[:, 0] * flat_v
    inter = jax.ops.segment_sum(p_true, flat_y, num_classes)
    truth = jax.ops.segment_sum(flat_v, flat_y, num_classes)
    denom = flat_v @ flat_p + truth
    present = truth > 0
    n = present.sum()
    scale = jnp.where(present, 2.0 / jnp.maximum(n, 1), 0.0)
    safe_denom = jnp.where(present, denom, 1.0)
    loss = jnp.where(n > 0, 1.0 - jnp.sum(scale * inter / safe_denom), 0.0)
    # d loss / d p[i, c] = v_i (alpha_c + beta_c [y_i = c])
    alpha = scale * inter / safe_denom**2
    beta = -scale / safe_denom
    return loss, (p, v, labels, p_true.reshape(labels.shape), alpha, beta)


@jax.custom_vjp
def _soft_dice(logits, valid, labels):
    return _soft_dice_parts(logits, valid, labels)[0]


def _soft_dice_bwd(res, g):
    # softmax's adjoint: d/dz_ic = p_ic (d_ic - sum_k p_ik d_ik) with d_ic = v_i (alpha_c +
    # beta_c [y_i = c]); the row sum is p_i . alpha + beta_{y_i} p_{i, y_i}: a matvec, no
    # reduction over the class axis.
    p, v, labels, p_true, alpha, beta = res
    row = p @ alpha + beta[labels] * p_true
    onehot = labels[..., None] == jnp.arange(p.shape[-1])
    d = alpha + jnp.where(onehot, beta, 0.0) - row[..., None]
    return (g * v)[..., None] * p * d, None, None


_soft_dice.defvjp(_soft_dice_parts, _soft_dice_bwd)  # forward: (loss, residuals)


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, seed: int, input_shape: tuple[int, ...]
) -> TrainState:
    """Initial state (call under jax.jit with out_shardings so it is born sharded)."""
    # The first half of split(key(seed)): the stream train.py has always drawn its initial weights
    # from (key(seed) itself would give other weights and other results for the same seed).
    init_key = jax.random.split(jax.random.key(seed))[0]
    variables = model.init(init_key, jnp.zeros(input_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int = 0,
    class_weights: Any = None,
    dice_weight: float = 0.0,
) -> Callable:
    """Returns the pure `train_step(state, batch) -> (state, metrics)`.

    `class_weights` ([num_classes] floats or None) weight the pixel loss by true class
    (pixel_cross_entropy); None is the paper's plain mean. A non-zero `dice_weight` adds
    that multiple of soft_dice_loss to it.

    BatchNorm uses the statistics of the whole (global, possibly sharded) batch: under jit the
    means are reductions over the sharded batch axis, so BN is synchronised across devices.
    Dropout (the public FCN-8s) draws from ``fold_in(key(seed), step)``: a function of the step,
    so a resumed run draws the same masks without a key in the state.
    A non-finite loss leaves the state unchanged and reports `finite = False`.
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            loss, count = pixel_cross_entropy(
                logits, batch["label"], class_weights=class_weights
            )
            if dice_weight:
                loss = loss + dice_weight * soft_dice_loss(logits, batch["label"])
            # a network without BN (the public FCN-8s) has no batch_stats to update
            return loss, (updates.get("batch_stats", {}), count, logits)

        (loss, (batch_stats, count, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )

        def update() -> TrainState:
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return TrainState(state.step + 1, params, batch_stats, opt_state)

        # A cond, not a where over the state: the update runs in place on the (donated) state
        # instead of materialising new and old side by side (benchmarks/NOTES.md).
        new = jax.lax.cond(finite, update, lambda: state)
        pred = jnp.argmax(logits, -1)
        valid = batch["label"] != IGNORE_LABEL
        acc = jnp.sum((pred == batch["label"]) & valid) / jnp.maximum(valid.sum(), 1)
        return new, {"loss": loss, "pixel_acc": acc, "valid_pixels": count, "finite": finite}

    return train_step


def make_eval_step(model: nn.Module, num_classes: int) -> Callable:
    """Returns `eval_step(variables, batch) -> confusion [C, C]` (eval-mode BN)."""

    def eval_step(variables, batch: dict) -> jax.Array:
        logits = model.apply(variables, batch["image"], train=False)
        return confusion_matrix(jnp.argmax(logits, -1), batch["label"], num_classes)

    return eval_step
