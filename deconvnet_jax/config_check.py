"""Up-front validation of a training config: every problem found, one line each, field named.

``check_train_config(config)`` runs before anything is built (trainer.setup, the sweep), so a
negative learning rate or ``batch_size=0`` is reported in a second, not after model init.
"""

from __future__ import annotations

import math

from deconvnet_jax.errors import UserError

_CHOICES = {
    "model.name": ("deconvnet", "fcn8s"),
    "model.dtype": ("float32", "bfloat16", "float16", "float64"),
    "model.param_dtype": ("float32", "float64"),
    "model.conv_impl": ("auto", "direct", "winograd"),
    "model.unpool_impl": ("", "scatter", "window"),
    "model.decoder_init": ("release", "he"),
    "data.name": ("voc", "synthetic"),
    "data.mode": ("stage1", "stage2", "whole"),
    "data.normalization": ("caffe_bgr", "imagenet"),
    "optim.name": ("sgd", "adam", "adamw"),
    "optim.schedule": ("step", "constant", "cosine"),
    "train.class_weights": ("none", "median_frequency"),
}
_POSITIVE = (  # > 0
    "model.width_multiplier",
    "optim.lr",
    "optim.gamma",
    "data.crop_size",
    "data.resize",
    "data.eval_size",
    "train.batch_size",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_batch_size",
    "optim.accum_steps",
)
_NON_NEGATIVE = (  # >= 0
    "optim.momentum",
    "optim.weight_decay",
    "optim.bias_lr_mult",
    "optim.clip_norm",
    "optim.warmup_steps",
    "train.num_steps",
    "train.eval_every",
    "train.eval_max_images",
    "train.recompute_bn_batches",
    "train.dice_weight",
    "data.num_workers",
    "data.box_enlarge",
)


class ConfigError(UserError, ValueError):
    """A config with problems; the message has one line per problem."""


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def train_config_problems(config) -> list[str]:
    """One line per problem of a training config (``configs/default.py``'s fields)."""
    problems = []
    for field, choices in _CHOICES.items():
        value = _get(config, field)
        if value is not None and value not in choices:
            problems.append(f"config.{field}={value!r} is not one of {list(choices)}")
    for field, strict in [(f, True) for f in _POSITIVE] + [(f, False) for f in _NON_NEGATIVE]:
        value = _get(config, field)
        if value is None:
            continue
        if not _number(value) or not math.isfinite(value) or value < 0 or (strict and value == 0):
            need = "a number > 0" if strict else "a number >= 0"
            problems.append(f"config.{field}={value!r} must be {need}")
    if _number(_get(config, "optim.momentum")) and config.optim.momentum >= 1:
        problems.append(f"config.optim.momentum={config.optim.momentum!r} must be < 1")
    warmup, decay = _get(config, "optim.warmup_steps"), _get(config, "optim.decay_steps")
    if _number(warmup) and warmup > 0 and _get(config, "optim.schedule") != "cosine":
        problems.append(f"config.optim.warmup_steps={warmup} needs config.optim.schedule='cosine'")
    elif _number(warmup) and warmup > 0 and decay and warmup >= max(decay):
        problems.append(
            f"config.optim.warmup_steps={warmup} must be < max(config.optim.decay_steps)="
            f"{max(decay)} (the cosine's length, warm-up included)"
        )
    crop, resize = _get(config, "data.crop_size"), _get(config, "data.resize")
    if _number(crop) and _number(resize) and resize < crop:
        problems.append(f"config.data.resize={resize} is smaller than config.data.crop_size={crop}")
    if _get(config, "data.name") == "voc" and not (config.data.voc_root or config.data.tfds_dir):
        problems.append(
            "config.data.voc_root (or config.data.tfds_dir) must be set for data.name='voc'"
        )
    return problems


def check_train_config(config) -> None:
    """Raises ConfigError listing every problem (one line each) of a training config."""
    problems = train_config_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))
