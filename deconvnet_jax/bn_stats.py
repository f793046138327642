"""The release's "recompute BN statistics" step (PAPER.md "BatchNorm in the release").

The Caffe release kept no running averages: before testing it averaged each BN layer's batch
mean and variance over ~500 forward passes of training batches. `recompute_batch_stats` does the
same for a flax model: it runs train-mode forwards with momentum 0 (so each pass's statistics are
exactly that batch's), averages them over the batches, and returns new `batch_stats` that
replace the running averages. Useful when the running averages are stale (the "predicts all
background" failure of a model tested with mismatched BN statistics).
"""

from __future__ import annotations

from typing import Any, Iterable

import jax
import jax.numpy as jnp
from tqdm import tqdm


def recompute_batch_stats(
    model, variables: dict, batches: Iterable[dict], num_batches: int, progress: bool = True
) -> Any:
    """Averages per-batch BN statistics over `num_batches` training batches.

    Args:
      model: a flax module with `bn_momentum` (DeconvNet, FCN8s) applied as
        `model.apply(variables, x, train=True, mutable=["batch_stats"])`.
      variables: {"params", "batch_stats"}.
      batches: iterator of dict(image=[B, H, W, 3] float32, ...) (e.g. a TrainLoader; for a
        sharded run pass global arrays).
      num_batches: how many batches to average (the release used ~500).
      progress: show a tqdm bar.

    Returns:
      The new batch_stats pytree (mean and biased variance averaged over the batches).
    """
    if num_batches <= 0:
        raise ValueError(f"num_batches must be positive, got {num_batches}")
    frozen = model.clone(bn_momentum=0.0)

    @jax.jit
    def stats(params, batch_stats, image):
        _, upd = frozen.apply(
            {"params": params, "batch_stats": batch_stats},
            image,
            train=True,
            mutable=["batch_stats"],
        )
        return upd["batch_stats"]

    total = None
    it = iter(batches)
    for _ in tqdm(range(num_batches), desc="recompute BN", disable=not progress):
        s = stats(variables["params"], variables["batch_stats"], jnp.asarray(next(it)["image"]))
        total = s if total is None else jax.tree_util.tree_map(jnp.add, total, s)
    return jax.tree_util.tree_map(lambda t: t / num_batches, total)
