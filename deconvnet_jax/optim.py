"""The release's optimiser as an optax chain (PAPER.md "Training recipe").

SGD with momentum 0.9; weight decay 5e-4 on conv/deconv kernels only (not biases, not BN);
bias learning rate x2; step schedule (x gamma at each of `decay_steps`, counted in optimiser
updates); gradient accumulation over `accum_steps` micro-batches (optax.MultiSteps: 64 = 8 x 8 in
the release); optional global-norm clipping. "adam" / "adamw" for ablations, with the same
parameter groups.
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
        return optax.cosine_decay_schedule(lr, total)
    raise ValueError(f"unknown config.optim.schedule {optim_config.schedule!r}")


def _base(name: str, lr, optim_config) -> optax.GradientTransformation:
    if name == "sgd":
        return optax.sgd(lr, momentum=optim_config.momentum or None)
    if name in ("adam", "adamw"):
        return optax.adam(lr)
    raise ValueError(f"unknown config.optim.name {name!r} (expected 'sgd', 'adam' or 'adamw')")


def make_optimizer(optim_config) -> optax.GradientTransformation:
    """The optax transformation of config.optim (parameter groups labelled from the tree it is
    applied to).

    Args:
      optim_config: config.optim (configs/default.py).
    """
    schedule = learning_rate_schedule(optim_config)
    bias_schedule = lambda count: optim_config.bias_lr_mult * schedule(count)  # noqa: E731
    decay = (
        optax.add_decayed_weights(optim_config.weight_decay)
        if optim_config.weight_decay
        else optax.identity()
    )
    groups = {
        # Decay enters the gradient before momentum, as in Caffe's SGD.
        "kernel": optax.chain(decay, _base(optim_config.name, schedule, optim_config)),
        "bias": _base(optim_config.name, bias_schedule, optim_config),
        "bn": _base(optim_config.name, schedule, optim_config),
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
