"""The public FCN-8s (``FCN8s(batch_norm=False)``, registry "fcn8s_caffe"): layer shapes and
parameter count of ``fcn-8s-pascal-deploy.prototxt``, float64 parity with a torch functional
forward over Caffe blobs (eval and train with dropout), frozen ``upsample``."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import fcn8s_caffe
from deconvnet_jax import optim, train_lib
from deconvnet_jax.models import build_model, count_params, fcn
from deconvnet_jax.models.fcn import FCN8s
from deconvnet_jax.torch.reference import fcn8s_caffe_forward
from tests.nets import random_variables

PROTOTXT = Path(__file__).resolve().parents[2] / "shared/reference/fcn-8s-pascal-deploy.prototxt"

# Typed in from fcn-8s-pascal-deploy.prototxt: (Caffe layer, kind, kernel, in, out, pad, stride,
# bias_term, blobs_lr of the weight) at width 1 and 21 classes.
CAFFE_TABLE = [
    ("conv1_1", "conv", 3, 3, 64, 100, 1, 1, 1), ("conv1_2", "conv", 3, 64, 64, 1, 1, 1, 1),
    ("conv2_1", "conv", 3, 64, 128, 1, 1, 1, 1), ("conv2_2", "conv", 3, 128, 128, 1, 1, 1, 1),
    ("conv3_1", "conv", 3, 128, 256, 1, 1, 1, 1), ("conv3_2", "conv", 3, 256, 256, 1, 1, 1, 1),
    ("conv3_3", "conv", 3, 256, 256, 1, 1, 1, 1), ("conv4_1", "conv", 3, 256, 512, 1, 1, 1, 1),
    ("conv4_2", "conv", 3, 512, 512, 1, 1, 1, 1), ("conv4_3", "conv", 3, 512, 512, 1, 1, 1, 1),
    ("conv5_1", "conv", 3, 512, 512, 1, 1, 1, 1), ("conv5_2", "conv", 3, 512, 512, 1, 1, 1, 1),
    ("conv5_3", "conv", 3, 512, 512, 1, 1, 1, 1),
    ("fc6", "conv", 7, 512, 4096, 0, 1, 1, 1), ("fc7", "conv", 1, 4096, 4096, 0, 1, 1, 1),
    ("score-fr", "conv", 1, 4096, 21, 0, 1, 1, 1), ("score2", "deconv", 4, 21, 21, 0, 2, 1, 1),
    ("score-pool4", "conv", 1, 512, 21, 0, 1, 1, 1), ("score4", "deconv", 4, 21, 21, 0, 2, 0, 1),
    ("score-pool3", "conv", 1, 256, 21, 0, 1, 1, 1), ("upsample", "deconv", 16, 21, 21, 0, 8, 0, 0),
]  # fmt: skip


def _module_path(caffe_name):
    return fcn.fcn_layer_paths()[fcn.CAFFE_LAYERS.get(caffe_name, caffe_name)]


def _node(params, caffe_name):
    for key in _module_path(caffe_name):
        params = params[key]
    return params


def to_caffe_blobs(params) -> dict[str, list[torch.Tensor]]:
    """Our parameters in Caffe layouts, by Caffe layer name (the mapping of fcn.py's docstring)."""
    blobs = {}
    for name, kind, *_ in CAFFE_TABLE:
        node = {k: np.asarray(v) for k, v in _node(params, name).items()}
        kernel = node.get("kernel", node.get("frozen_kernel"))
        w = kernel.transpose(3, 2, 0, 1) if kind == "conv" else kernel.transpose(2, 3, 0, 1)
        blobs[name] = [torch.from_numpy(w.copy())]
        if "bias" in node:
            blobs[name].append(torch.from_numpy(node["bias"].copy()))
    return blobs


def test_prototxt_table_matches_the_release_file():
    if not PROTOTXT.exists():
        pytest.skip(f"{PROTOTXT} not present (the table above is typed in from it)")
    text = PROTOTXT.read_text()
    got = {}
    for body in re.split(r"\blayers\s*\{", text)[1:]:  # one V1 layer each

        def field(name, default, body=body):
            found = re.search(rf"\b{name}:\s*(\d+)", body)
            return int(found.group(1)) if found else default

        kind = re.search(r"type:\s*(\w+)", body).group(1)
        if kind in ("CONVOLUTION", "DECONVOLUTION"):
            name = re.search(r"name:\s*'([^']+)'", body).group(1)
            bias = 0 if "bias_term: false" in body else 1
            got[name] = (
                field("kernel_size", None), field("num_output", None), field("pad", 0),
                field("stride", 1), bias, field("blobs_lr", 1),
            )  # fmt: skip
    want = {n: (k, cout, pad, s, b, lr) for n, _, k, _, cout, pad, s, b, lr in CAFFE_TABLE}
    assert got == want
    assert "BN" not in text and text.count("dropout_ratio: 0.5") == 2


def test_full_size_shapes_and_param_count_equal_the_prototxt():
    shapes = jax.eval_shape(
        FCN8s(batch_norm=False).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3))
    )
    assert set(shapes) == {"params"}  # no BN statistics
    total = 0
    for name, kind, k, cin, cout, _, _, bias, lr in CAFFE_TABLE:
        node = _node(shapes["params"], name)
        kname = "kernel" if lr else "frozen_kernel"
        assert set(node) == ({kname, "bias"} if bias else {kname}), name
        assert node[kname].shape == (k, k, cin, cout), name
        total += k * k * cin * cout + bias * cout
    assert count_params(shapes["params"]) == total == 134_489_780


@pytest.fixture(scope="module")
def small_net():
    """Width 1/16, float64, random weights (score layers included), a 2 x 36 x 44 input."""
    with jax.enable_x64(True):
        model = FCN8s(
            batch_norm=False, width_multiplier=1 / 16, dtype=jnp.float64, param_dtype=jnp.float64
        )
        variables = random_variables(model, seed=0, dtype=np.float64, hw=(36, 44))
        x = np.random.default_rng(1).standard_normal((2, 36, 44, 3)) * 50
        yield model, variables, x


def _torch_logits(variables, x, masks=None):
    blobs = to_caffe_blobs(variables["params"])
    with torch.no_grad():
        out = fcn8s_caffe_forward(blobs, torch.from_numpy(x).permute(0, 3, 1, 2), masks)
    return out.permute(0, 2, 3, 1).numpy()


def test_eval_forward_equals_torch_functional_reference_float64(small_net):
    model, variables, x = small_net
    with jax.enable_x64(True):
        out = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
    want = _torch_logits(variables, x)
    assert out.shape == want.shape == (2, 36, 44, 21) and out.dtype == np.float64
    assert np.abs(want).max() > 1
    assert np.abs(out - want).max() <= 1e-10 * np.abs(want).max()


def test_train_forward_drops_half_of_fc6_fc7_and_equals_reference_with_its_masks(small_net):
    model, variables, x = small_net
    with jax.enable_x64(True):

        def train_fwd(v, x, key):
            return model.apply(
                v, x, train=True, rngs={"dropout": key}, capture_intermediates=True,
                mutable=["intermediates"],
            )  # fmt: skip

        out, state = jax.jit(train_fwd)(variables, x, jax.random.key(3))
        inter = state["intermediates"]["fc"]
        masks = {}
        for layer, drop in (("fc6", "drop6"), ("fc7", "drop7")):
            relu = np.maximum(np.asarray(inter[layer]["__call__"][0]), 0)  # conv output, ReLU
            dropped = np.asarray(inter[drop]["__call__"][0])
            kept = dropped != 0
            # inverted dropout: kept units x 1 / (1 - 0.5), the others 0
            np.testing.assert_array_equal(dropped[kept], 2 * relu[kept])
            frac = kept[relu > 0].mean()
            assert 0.4 < frac < 0.6, (drop, frac)
            masks[drop] = torch.from_numpy(kept.transpose(0, 3, 1, 2).astype(np.float64))
        out2 = jax.jit(train_fwd)(variables, x, jax.random.key(4))[0]
        evald = model.apply(variables, x, train=False)
    want = _torch_logits(variables, x, masks)
    assert np.abs(np.asarray(out) - want).max() <= 1e-10 * np.abs(want).max()
    assert not np.allclose(out, out2) and not np.allclose(out, evald)  # masks vary; eval has none


def test_registry_and_a_train_step_leave_upsample_frozen():
    config = fcn8s_caffe.get_config()
    assert config.model.name == "fcn8s_caffe"
    config.model.num_classes, config.model.width_multiplier = 3, 1 / 32
    config.optim.accum_steps = 1
    model = build_model(config.model)
    assert isinstance(model, FCN8s) and not model.batch_norm
    params = random_variables(model, seed=2, hw=(32, 32))["params"]
    labels = optim.param_groups(params)
    assert labels["upscore8"] == {"frozen_kernel": "frozen"}
    assert labels["upscore2"] == {"kernel": "kernel", "bias": "bias"}
    tx = optim.make_optimizer(config.optim)
    state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.standard_normal((1, 32, 32, 3)) * 50, jnp.float32),
        "label": jnp.asarray(rng.integers(0, 3, (1, 32, 32)), jnp.int32),
    }
    new, metrics = jax.jit(train_lib.make_train_step(model, tx))(state, batch)
    assert bool(metrics["finite"]) and int(new.step) == 1 and new.batch_stats == {}
    # upsample (Caffe blobs_lr 0): no update, not even weight decay; score4 and score2 learn
    np.testing.assert_array_equal(
        new.params["upscore8"]["frozen_kernel"], params["upscore8"]["frozen_kernel"]
    )
    for layer, leaf in (("upscore_pool4", "kernel"), ("upscore2", "bias"), ("fc", "fc7")):
        assert not np.array_equal(jax.tree.leaves(new.params[layer][leaf]), jax.tree.leaves(
            params[layer][leaf]
        )), layer  # fmt: skip
