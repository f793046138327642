"""The paper's network (PAPER.md "Network") with the release's training recipe defaults.

Usage: ``python train.py --config configs/default.py``; override any field with
``--config.model.dtype=bfloat16`` etc. Other configs derive from this one.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # --- model -----------------------------------------------------------------
    config.model = ml_collections.ConfigDict()
    config.model.name = "deconvnet"  # or "fcn8s"
    config.model.num_classes = 21
    config.model.width_multiplier = 1.0
    config.model.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 params
    config.model.remat = False  # per-block jax.checkpoint
    config.model.bn_momentum = 0.9  # flax convention (torch momentum 0.1)
    config.model.bn_epsilon = 1e-5  # the release used 1e-9
    config.model.bn_bias_init = 0.001  # the release's BN shift init
    config.model.unpool_impl = ""  # "" = pooling.DEFAULT_UNPOOL; "scatter" | "window"
    return config
