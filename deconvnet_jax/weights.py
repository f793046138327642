"""One place for weights: ``load_weights(path, like)`` reads a training run, a PyTorch ``.pth`` or a
Caffe ``.caffemodel`` into Flax variables shaped like a network's.

- a run directory (or its ``checkpoints/`` folder): params and BN statistics of its latest
  restorable checkpoint (or the best by val mIoU), whatever optimiser it was trained with;
- ``.pth`` / ``.pt`` / ``.bin``: torchvision VGG16 / VGG16-BN (``features.*`` keys: encoder, fc6,
  fc7; the other layers keep ``like``'s values) or a full DeconvNet / FCN-8s state dict in the
  torch/weights.py format (read with ``torch.load(weights_only=True)``);
- ``.caffemodel``: the release's Caffe models (interop/caffe.py).

``init_state_from`` puts such weights into a fresh TrainState (``config.init_from``: params and BN
statistics, a fresh optimiser and step 0).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from deconvnet_jax import checkpoint, paths

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
CAFFE_SUFFIX = ".caffemodel"


def load_run_variables(run_dir, best: bool = False, sharding=None) -> dict:
    """params + batch_stats of a training run's checkpoint.

    Args:
      run_dir: a run directory (with checkpoints/) or its checkpoints folder.
      best: the best-mIoU checkpoint instead of the latest restorable one.
      sharding: where the arrays go (default: the first local device).
    Raises:
      FileNotFoundError naming the folder when it holds no restorable checkpoint.
    """
    ckpt = checkpoint.Checkpointer(checkpoint.checkpoints_dir(run_dir), create=False)
    try:
        return ckpt.restore_variables(best=best, sharding=sharding)
    finally:
        ckpt.close()


def load_weights(
    path, like, model: str = "deconvnet", best: bool = False, bn_epsilon: float = 1e-5
) -> dict:
    """Flax variables {'params', 'batch_stats'} from a run directory, a .pth or a .caffemodel.

    Args:
      path: see the module docstring.
      like: variables of the target network (arrays or ShapeDtypeStructs): the shapes to check
        against, and the values of layers a VGG16 file does not cover.
      model: the target network's config.model.name ("deconvnet" or "fcn8s").
      best: for a run directory, its best-mIoU checkpoint.
      bn_epsilon: the target's config.model.bn_epsilon (a DeconvNet INFERENCE caffemodel's folded
        BN becomes var = 1 - bn_epsilon, so that BN computes scale * x + shift).
    Raises:
      FileNotFoundError, KeyError or ValueError naming the file and the problem.
    """
    p = paths.as_path(path)
    if p.suffix in TORCH_SUFFIXES:
        from deconvnet_jax.torch import weights as torch_weights

        sd = torch_weights.load_torch_checkpoint(p)
        if any(k.startswith("features.") for k in sd):
            return torch_weights.vgg16_to_flax(sd, like, source=str(p))
        return torch_weights.from_torch_state_dict(sd, like, model, source=str(p))
    if p.suffix == CAFFE_SUFFIX:
        from deconvnet_jax.interop import caffe

        return caffe.caffemodel_to_flax(p, like, model, bn_epsilon=bn_epsilon)
    if not p.is_dir():
        raise FileNotFoundError(
            f"{path}: not a run directory, {'/'.join(TORCH_SUFFIXES)} or {CAFFE_SUFFIX} file"
        )
    return load_run_variables(p, best=best)


def init_state_from(path, fresh: Any, model: str = "deconvnet", bn_epsilon: float = 1e-5) -> Any:
    """`fresh` (a TrainState) with params and BN statistics from `path` (``config.init_from``),
    each placed with the sharding of the leaf it replaces; optimiser and step stay fresh."""
    like = jax.device_get({"params": fresh.params, "batch_stats": fresh.batch_stats})
    variables = load_weights(path, like, model, bn_epsilon=bn_epsilon)
    place = lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding)  # noqa: E731
    return fresh.replace(
        params=jax.tree.map(place, variables["params"], fresh.params),
        batch_stats=jax.tree.map(place, variables["batch_stats"], fresh.batch_stats),
    )
