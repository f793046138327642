"""The release's optimiser as an optax chain (PAPER.md "Training recipe", CAFFE.md "The
release's optimiser").

Caffe SGD with momentum 0.9 and the learning rate inside the velocity (``momentum_style="caffe"``;
"optax" puts it outside, as optax.sgd); weight decay 5e-4 on conv/deconv kernels and BN scale /
shift (``bn_weight_decay``), not on biases; bias learning rate x2; step schedule (x gamma at each
of `decay_steps`, counted in optimiser updates); gradient accumulation over `accum_steps`
micro-batches (optax.MultiSteps: 64 = 8 x 8 in the release); optional global-norm clipping.
"adam" (L2 in the gradient) / "adamw" (decoupled decay, optax.adamw) for ablations, with the
same parameter groups. ``frozen_*`` parameters (the public FCN-8s' upsample) are never updated.
"""

from __future__ import annotations

import flax.traverse_util
import jax
import optax

GROUPS = ("kernel", "bias", "bn", "frozen")


def param_groups(params) -> dict:
    """Labels every parameter: 'kernel' (conv/deconv weights), 'bias' (their biases), 'bn', or
    'frozen' (leaves named ``frozen_*``: never updated, as Caffe's blobs_lr 0)."""
    flat = flax.traverse_util.flatten_dict(params)
    labels = {}
    for path in flat:
        module, leaf = path[-2], path[-1]
        if leaf.startswith("frozen_"):
            labels[path] = "frozen"
        elif module.endswith("_bn"):
            labels[path] = "bn"
        elif leaf == "kernel":
            labels[path] = "kernel"
        elif leaf == "bias":
            labels[path] = "bias"
        else:
            raise ValueError(f"parameter {'/'.join(path)} has no optimiser group")
    return flax.traverse_util.unflatten_dict(labels)


def learning_rate_schedule(optim_config) -> optax.Schedule:
    """The base learning rate as a function of the optimiser update count."""
    lr = optim_config.lr
    if optim_config.schedule == "step":
        return optax.piecewise_constant_schedule(
            lr, {int(s): optim_config.gamma for s in optim_config.decay_steps}
        )
    if optim_config.schedule == "constant":
        return optax.constant_schedule(lr)
    if optim_config.schedule == "cosine":
        total = int(max(optim_config.decay_steps)) if optim_config.decay_steps else 1
        warmup = int(optim_config.get("warmup_steps", 0))  # runs saved before the field: 0
        if warmup:
            return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total)
        return optax.cosine_decay_schedule(lr, total)
    raise ValueError(f"unknown config.optim.schedule {optim_config.schedule!r}")


def _group(optim_config, lr: optax.Schedule, weight_decay: float) -> optax.GradientTransformation:
    """One parameter group's transformation at learning rate ``lr`` and decay ``weight_decay``.

    - sgd, momentum_style "caffe" (the release): v = m * v + lr(t) * (g + wd * w), update -v
      (the learning rate inside the velocity: after a schedule step the old velocity decays).
    - sgd, momentum_style "optax": optax.sgd over g + wd * w: t = m * t + (g + wd * w), update
      -lr(t) * t (a schedule step rescales the whole velocity at once).
    - adam: Adam over g + wd * w (L2 in the gradient); adamw: optax.adamw (decoupled decay,
      update -lr(t) * (adam direction + wd * w)).
    """
    name = optim_config.name
    decay = optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity()
    if name == "sgd":
        momentum = optim_config.momentum or None
        if optim_config.momentum_style == "caffe":
            trace = optax.trace(decay=momentum) if momentum else optax.identity()
            return optax.chain(decay, optax.scale_by_learning_rate(lr), trace)
        if optim_config.momentum_style == "optax":
            return optax.chain(decay, optax.sgd(lr, momentum=momentum))
        raise ValueError(
            f"unknown config.optim.momentum_style {optim_config.momentum_style!r} "
            "(expected 'caffe' or 'optax')"
        )
    if name == "adam":
        return optax.chain(decay, optax.adam(lr))
    if name == "adamw":
        return optax.adamw(lr, weight_decay=weight_decay)
    raise ValueError(f"unknown config.optim.name {name!r} (expected 'sgd', 'adam' or 'adamw')")


def make_optimizer(optim_config) -> optax.GradientTransformation:
    """The optax transformation of config.optim (parameter groups labelled from the tree it is
    applied to).

    Groups (the release's multipliers, CAFFE.md "The release's optimiser"): kernels lr x1, decay
    x1; biases lr x ``bias_lr_mult``, no decay; BN scale and shift lr x1, decay x1 when
    ``bn_weight_decay`` (Caffe's defaults, as in the release) else none; frozen: no update.

    Args:
      optim_config: config.optim (configs/default.py).
    """
    schedule = learning_rate_schedule(optim_config)
    bias_schedule = lambda count: optim_config.bias_lr_mult * schedule(count)  # noqa: E731
    wd = optim_config.weight_decay
    groups = {
        "kernel": _group(optim_config, schedule, wd),
        "bias": _group(optim_config, bias_schedule, 0.0),
        "bn": _group(optim_config, schedule, wd if optim_config.bn_weight_decay else 0.0),
        "frozen": optax.set_to_zero(),
    }
    tx = optax.multi_transform(groups, param_groups)
    if optim_config.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(optim_config.clip_norm), tx)
    if optim_config.accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim_config.accum_steps)
    return tx


def current_lr(optim_config, update_count) -> jax.Array:
    """The base learning rate after `update_count` optimiser updates (for logging)."""
    return learning_rate_schedule(optim_config)(update_count)
