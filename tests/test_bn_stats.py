"""Recomputed BN statistics equal the average of per-batch channel statistics computed by torch."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from deconvnet_jax.bn_stats import recompute_batch_stats
from deconvnet_jax.models.deconvnet import DeconvNet


def test_first_layer_statistics_match_a_torch_conv_average():
    model = DeconvNet(width_multiplier=1 / 32)
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))()
    rng = np.random.default_rng(0)
    batches = [
        {"image": (rng.standard_normal((2, 224, 224, 3)) * (k + 1)).astype(np.float32)}
        for k in range(3)
    ]
    new = recompute_batch_stats(model, variables, iter(batches), 3, progress=False)

    conv = variables["params"]["block1"]["conv1_1"]
    weight = torch.from_numpy(np.asarray(conv["kernel"]).transpose(3, 2, 0, 1).copy())
    means, variances = [], []
    for b in batches:
        x = torch.from_numpy(b["image"]).permute(0, 3, 1, 2)
        y = torch.nn.functional.conv2d(
            x, weight, torch.from_numpy(np.array(conv["bias"])), padding=1
        )
        means.append(y.mean(dim=(0, 2, 3)).numpy())
        variances.append(y.var(dim=(0, 2, 3), unbiased=False).numpy())
    got = new["block1"]["conv1_1_bn"]
    np.testing.assert_allclose(got["mean"], np.mean(means, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["var"], np.mean(variances, 0), rtol=1e-4)
    # every BN layer got new statistics, differing from the init running averages
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(
        variables["batch_stats"]
    )
    assert not np.allclose(got["var"], variables["batch_stats"]["block1"]["conv1_1_bn"]["var"])
