"""The release's "recompute BN statistics" step (PAPER.md "BatchNorm in the release", CAFFE.md
"The release's statistics").

The Caffe release kept no running averages: before testing it averaged each BN layer's batch
mean and (biased) variance over ~500 forward passes of training batches and multiplied the
averaged variance by m / (m - 1), m = N * H * W the number of values per channel in one pass at
that layer (unbiased; 28/27 at fc6/fc7, whose maps are 1x1, with batches of 28).
`recompute_batch_stats` does the same for a flax model: it runs train-mode forwards with momentum
0 (so each pass's statistics are exactly that batch's), averages them over the batches, applies
the per-layer factor, and returns new `batch_stats` that replace the running averages. Useful
when the running averages are stale (the "predicts all background" failure of a model tested with
mismatched BN statistics) and for imports that carry no statistics (LEARN-mode Caffe results).
"""

from __future__ import annotations

from typing import Any, Iterable

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm


def bn_counts(model, variables: dict, image_shape: tuple[int, ...]) -> dict:
    """m = N * H * W (values per channel in one pass) of every BN layer, by its module path.

    Computed from shapes only (``jax.eval_shape`` of a train-mode forward capturing the BN
    outputs), so nothing runs.
    """

    def forward(v, x):
        _, state = model.apply(
            v,
            x,
            train=True,
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=lambda module, _: isinstance(module, nn.BatchNorm),
        )
        return state["intermediates"]

    image = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    shapes = flax.traverse_util.flatten_dict(jax.eval_shape(forward, variables, image))
    # key: (..., "<layer>_bn", "__call__") -> (output shape,)
    return {key[:-1]: int(np.prod(out[0].shape[:-1])) for key, out in shapes.items()}


def recompute_batch_stats(
    model, variables: dict, batches: Iterable[dict], num_batches: int, progress: bool = True
) -> Any:
    """Averages per-batch BN statistics over `num_batches` training batches, as the release.

    Args:
      model: a flax module with `bn_momentum` (DeconvNet, FCN8s) applied as
        `model.apply(variables, x, train=True, mutable=["batch_stats"])`.
      variables: {"params", "batch_stats"}.
      batches: iterator of dict(image=[B, H, W, 3] float32, ...) (e.g. a TrainLoader; for a
        sharded run pass global arrays), all of the same shape.
      num_batches: how many batches to average (the release used ~500).
      progress: show a tqdm bar.

    Returns:
      The new batch_stats pytree: mean = average of the batch means; var = average of the
      batch (biased) variances x m / (m - 1), m = N * H * W of that layer in one pass.
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

    total, shape = None, None
    it = iter(batches)
    for _ in tqdm(range(num_batches), desc="recompute BN", disable=not progress):
        image = jnp.asarray(next(it)["image"])
        if shape is not None and image.shape != shape:
            raise ValueError(f"BN recompute batches must share one shape: {shape} != {image.shape}")
        shape = image.shape
        s = stats(variables["params"], variables["batch_stats"], image)
        total = s if total is None else jax.tree.map(jnp.add, total, s)
    counts = bn_counts(model, variables, shape)
    flat = flax.traverse_util.flatten_dict(jax.tree.map(lambda t: t / num_batches, total))
    for key in flat:
        if key[-1] == "var":
            m = counts[key[:-1]]
            if m < 2:
                raise ValueError(f"BN layer {'/'.join(key[:-1])} sees {m} value per channel")
            flat[key] = flat[key] * (m / (m - 1))
    return flax.traverse_util.unflatten_dict(flat)
