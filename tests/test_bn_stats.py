"""Recomputed BN statistics equal the release's: the average over the passes of per-pass channel
mean and biased variance, the variance times m / (m - 1) (m = N * H * W of that layer in a pass),
checked in float64 at conv1_1 (a torch conv) and at fc6 (2x2 maps: the factor is 8/7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import fcn8s_caffe
from deconvnet_jax import evaluation
from deconvnet_jax.bn_stats import bn_counts, recompute_batch_stats
from deconvnet_jax.models.fcn import FCN8s
from tests.nets import random_variables


def test_statistics_equal_a_numpy_average_with_the_unbiased_factor():
    hw, batch = (36, 44), 2
    with jax.enable_x64(True):
        model = FCN8s(
            num_classes=3, width_multiplier=1 / 32, dtype=jnp.float64, param_dtype=jnp.float64
        )
        variables = random_variables(model, seed=0, dtype=np.float64, hw=hw)
        rng = np.random.default_rng(0)
        batches = [{"image": rng.standard_normal((batch, *hw, 3)) * (k + 1)} for k in range(3)]
        new = recompute_batch_stats(model, variables, iter(batches), 3, progress=False)

        # fc6's pre-BN output per pass, captured from a train-mode forward
        def fc6_out(v, x):
            _, st = model.clone(bn_momentum=0.0).apply(
                v, x, train=True, mutable=["batch_stats", "intermediates"],
                capture_intermediates=lambda mdl, _: mdl.name == "fc6",
            )  # fmt: skip
            return st["intermediates"]["fc"]["fc6"]["__call__"][0]

        fc6 = [np.asarray(jax.jit(fc6_out)(variables, b["image"])) for b in batches]
        counts = bn_counts(model, variables, (batch, *hw, 3))

    conv = variables["params"]["block1"]["conv1_1"]
    weight = torch.from_numpy(np.asarray(conv["kernel"]).transpose(3, 2, 0, 1).copy())
    outputs = {"conv1_1": [], "fc6": [y.transpose(0, 3, 1, 2) for y in fc6]}
    for b in batches:
        x = torch.from_numpy(b["image"]).permute(0, 3, 1, 2)
        bias = torch.from_numpy(np.asarray(conv["bias"]))
        outputs["conv1_1"].append(torch.nn.functional.conv2d(x, weight, bias, padding=100).numpy())
    for layer, got, m_expected in (
        ("conv1_1", new["block1"]["conv1_1_bn"], batch * (hw[0] + 198) * (hw[1] + 198)),
        ("fc6", new["fc"]["fc6_bn"], batch * 2 * 2),
    ):
        ys = outputs[layer]  # [N, C, H, W] per pass
        m = ys[0].shape[0] * ys[0].shape[2] * ys[0].shape[3]
        assert m == m_expected
        mean = np.mean([y.mean(axis=(0, 2, 3)) for y in ys], 0)
        var = np.mean([y.var(axis=(0, 2, 3)) for y in ys], 0) * m / (m - 1)
        np.testing.assert_allclose(got["mean"], mean, rtol=1e-10, atol=1e-12, err_msg=layer)
        np.testing.assert_allclose(got["var"], var, rtol=1e-10, err_msg=layer)
    assert counts[("fc", "fc6_bn")] == 8 and counts[("fc", "fc7_bn")] == 8
    # every BN layer got new statistics
    assert jax.tree.structure(new) == jax.tree.structure(variables["batch_stats"])


def test_eval_recompute_bn_rejects_bad_requests_by_name():
    config = fcn8s_caffe.get_config()
    params = {"params": {"score_fr": {"kernel": np.zeros((1, 1, 2, 3))}}, "batch_stats": {}}
    with pytest.raises(ValueError, match="--recompute_bn must be >= 0, got -1"):
        evaluation.recompute_bn_stats(config, None, params, -1)
    with pytest.raises(ValueError, match="model 'fcn8s_caffe' has no BN layers"):
        evaluation.recompute_bn_stats(config, None, params, 5)
