"""The networks by name, and ``build_model(config.model)``.

Registry: ``MODELS[config.model.name]`` is a function of ``config.model`` returning the flax module.
The networks themselves (deconvnet.py, fcn.py) import only models/layers.py and models/pooling.py;
nothing imports this registry back.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import numpy as np

from deconvnet_jax.models.deconvnet import DeconvNet
from deconvnet_jax.models.fcn import FCN8s
from deconvnet_jax.models.layers import model_kwargs

MODELS: dict[str, Callable[..., nn.Module]] = {
    "deconvnet": lambda c: DeconvNet(
        **model_kwargs(c),
        unpool_impl=c.unpool_impl or None,
        decoder_init=c.get("decoder_init", "release"),  # run configs saved before the field
    ),
    "fcn8s": lambda c: FCN8s(**model_kwargs(c)),
    "fcn8s_caffe": lambda c: FCN8s(**model_kwargs(c), batch_norm=False),  # the public FCN-8s
}


def build_model(model_config) -> nn.Module:
    """The network named by ``config.model.name`` (configs/default.py), built from its fields."""
    if model_config.name not in MODELS:
        raise ValueError(f"config.model.name={model_config.name!r} is not one of {sorted(MODELS)}")
    return MODELS[model_config.name](model_config)


def count_params(tree) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
