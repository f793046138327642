"""Caffe import (interop/caffe.py): caffemodels written here from the layer lists of
tests/caffe_nets.py (typed in from the release's prototxts) with random blobs; the imported
networks against forwards written directly over the Caffe blobs with torch functional ops."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from deconvnet_jax import weights
from deconvnet_jax.interop import caffe
from deconvnet_jax.models.deconvnet import DeconvNet
from deconvnet_jax.models.fcn import FCN8s
from deconvnet_jax.torch.reference import fcn8s_caffe_forward
from tests import caffe_nets


def _like(model, hw=(64, 64)):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *hw, 3)))
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def _rel_err(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module")
def deconvnet_file(tmp_path_factory):
    """The full-width DeconvNet (251,805,653 parameters, ~1 GB) as a V1 INFERENCE file."""
    path = tmp_path_factory.mktemp("caffe") / "DeconvNet_trainval_inference.caffemodel"
    layers = caffe_nets.deconvnet_layers(seed=0)
    caffe.write_caffemodel(path, layers, version=1)
    return path, {name: blobs for name, _, blobs in layers if blobs}


def test_v1_and_v2_files_give_the_same_arrays(tmp_path):
    """V1 (legacy 4-D shapes) and V2 (shape) files, packed and unpacked, float and double data:
    the same arrays, equal to what was written (legacy shapes padded to 4-D)."""
    layers = caffe_nets.fcn8s_layers(seed=1, div=32)
    layers.append(("extra", "InnerProduct", [np.arange(6.0).reshape(2, 3)]))  # double_data
    reads = []
    for version, packed in ((1, True), (2, True), (1, False), (2, False)):
        path = tmp_path / f"v{version}{packed}.caffemodel"
        caffe.write_caffemodel(path, layers, version=version, packed=packed, legacy_shape=False)
        reads.append(caffe.read_caffemodel(path))
    caffe.write_caffemodel(tmp_path / "legacy.caffemodel", layers, version=1)
    legacy = caffe.read_caffemodel(tmp_path / "legacy.caffemodel")
    expected = {name: blobs for name, _, blobs in layers if blobs}
    for got in reads + [legacy]:
        assert list(got) == list(expected)
        for name, blobs in expected.items():
            for a, b in zip(got[name], blobs):
                assert a.dtype == b.dtype
                if got is legacy:
                    assert a.shape == (1,) * (4 - b.ndim) + b.shape
                np.testing.assert_array_equal(a.reshape(b.shape), b)
    assert legacy["extra"][0].dtype == np.float64


def test_full_width_deconvnet_matches_torch_over_caffe_blobs(deconvnet_file):
    """load_caffemodel of an INFERENCE file: float64 logits equal DeconvNet_inference_deploy
    over the blobs (conv2d, conv_transpose2d on [in, out, kh, kw], ceil-mode max_pool2d with
    indices, max_unpool2d, BN as scale * x + shift)."""
    path, blobs = deconvnet_file
    x = np.random.default_rng(2).normal(0, 50, (1, 224, 224, 3))
    with jax.enable_x64(True):
        model, variables = caffe.load_caffemodel(path, dtype=np.float64)
        got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
        del variables
    blobs64 = {k: [b.astype(np.float64) for b in v] for k, v in blobs.items()}
    want = caffe_nets.deconvnet_forward(blobs64, torch.from_numpy(x.transpose(0, 3, 1, 2)))
    want = want.numpy().transpose(0, 2, 3, 1)
    err = _rel_err(got, want)
    print(f"DeconvNet import vs torch: max abs {np.max(np.abs(got - want)):.3g}, rel {err:.3g}")
    assert err < 1e-9


def test_public_fcn8s_matches_torch_over_caffe_blobs(tmp_path):
    """The public FCN-8s (width 1/16) from a V2 file: float64 logits equal the torch functional
    fcn-8s-pascal forward over the blobs (crops at 5, 9, 31)."""
    layers = caffe_nets.fcn8s_layers(seed=3, div=16)
    path = tmp_path / "fcn-8s-pascal.caffemodel"
    caffe.write_caffemodel(path, layers, version=2)
    f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
    model = FCN8s(batch_norm=False, width_multiplier=1 / 16, **f64)
    x = np.random.default_rng(4).normal(0, 50, (1, 61, 75, 3))
    with jax.enable_x64(True):
        variables = weights.load_weights(path, _like(model), model="fcn8s_caffe")
        assert variables["params"]["upscore8"]["frozen_kernel"].dtype == np.float64
        got = np.asarray(model.apply(variables, jnp.asarray(x)))
    blobs = {n: [torch.from_numpy(b.astype(np.float64)) for b in bl] for n, _, bl in layers if bl}
    want = fcn8s_caffe_forward(blobs, torch.from_numpy(x.transpose(0, 3, 1, 2)))
    want = want.numpy().transpose(0, 2, 3, 1)
    err = _rel_err(got, want)
    print(f"FCN-8s import vs torch: max abs {np.max(np.abs(got - want)):.3g}, rel {err:.3g}")
    assert got.shape == (1, 61, 75, 21) and err < 1e-9


def test_learn_mode_file_loads_params_and_flags_missing_statistics(tmp_path):
    """A stage-result (LEARN) file: BN scale / shift are the blobs, the statistics are
    placeholders (0, 1), and the warning says how to recompute them."""
    layers = caffe_nets.deconvnet_layers(seed=5, div=32)
    path = tmp_path / "stage_2_train_result.caffemodel"
    caffe.write_caffemodel(path, layers, version=1)
    like = _like(DeconvNet(width_multiplier=1 / 32), hw=(224, 224))
    with pytest.warns(caffe.MissingBatchStatsWarning, match="--recompute_bn"):
        out = caffe.caffemodel_to_flax(path, like, "deconvnet")
    blobs = {name: b for name, _, b in layers}
    bn = out["params"]["dblock3"]["deconv3_3_bn"]
    np.testing.assert_array_equal(bn["scale"], blobs["debn3_3"][0].reshape(-1))
    np.testing.assert_array_equal(bn["bias"], blobs["debn3_3"][1].reshape(-1))
    stats = out["batch_stats"]["dblock3"]["deconv3_3_bn"]
    assert np.all(stats["mean"] == 0) and np.all(stats["var"] == 1)
    # a deconvolution blob [in, out, kh, kw] lands as kernel[y, x, i, o]
    w = blobs["deconv3_3"][0]
    np.testing.assert_array_equal(
        out["params"]["dblock3"]["deconv3_3"]["kernel"][1, 2, 3, 0], w[3, 0, 1, 2]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # INFERENCE: no warning, var = 1 - eps
        out = caffe.caffemodel_to_flax(path, like, "deconvnet", bn_mode="inference")
    assert np.all(out["batch_stats"]["fc"]["fc6_bn"]["var"] == np.float32(1 - 1e-5))


@pytest.mark.parametrize("fc_kind", ["InnerProduct", "Convolution"])
def test_vgg16_file_fills_encoder_and_fc(tmp_path, fc_kind):
    """VGG16 (Model Zoo InnerProduct fc6 [4096, 25088] flattened C, H, W, or the release's
    VGG_ILSVRC_16_layers_conv) -> encoder and fc6/fc7; the decoder keeps its values."""
    rng = np.random.default_rng(6)
    layers = [r for r in caffe_nets.deconvnet_layers(seed=6, div=32) if r[0] in caffe.VGG_LAYERS]
    assert [n for n, _, _ in layers] == list(caffe.VGG_LAYERS)  # plain VGG16: no BN
    fc6, fc7 = layers[-2][2][0], layers[-1][2][0]  # [128, 16, 7, 7], [128, 128, 1, 1]
    if fc_kind == "InnerProduct":
        layers[-2] = ("fc6", fc_kind, [fc6.reshape(fc6.shape[0], -1), layers[-2][2][1]])
        layers[-1] = ("fc7", fc_kind, [fc7.reshape(fc7.shape[0], -1), layers[-1][2][1]])
    layers.append(("fc8", "InnerProduct", [rng.standard_normal((10, 128)).astype(np.float32)]))
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    caffe.write_caffemodel(path, layers, version=2)
    model = DeconvNet(width_multiplier=1 / 32)
    like = jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), _like(model, hw=(224, 224)))
    out = weights.load_weights(path, like, model="deconvnet")
    got6 = out["params"]["fc"]["fc6"]["kernel"]  # [7, 7, 16, 128]
    np.testing.assert_array_equal(got6[2, 5, 3, 9], fc6[9, 3, 2, 5])
    np.testing.assert_array_equal(out["params"]["fc"]["fc7"]["kernel"][0, 0], fc7[:, :, 0, 0].T)
    np.testing.assert_array_equal(
        out["params"]["block1"]["conv1_1"]["kernel"], layers[0][2][0].transpose(2, 3, 1, 0)
    )
    assert np.all(out["params"]["dblock1"]["deconv1_1"]["kernel"] == 7.0)
    assert np.all(out["params"]["block1"]["conv1_1_bn"]["scale"] == 7.0)


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_unreadable_files_name_the_file_and_offset(tmp_path, damage):
    path = tmp_path / "good.caffemodel"
    caffe.write_caffemodel(path, caffe_nets.fcn8s_layers(div=64), version=1)
    data = path.read_bytes()
    bad = tmp_path / f"{damage}.caffemodel"
    bad.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "random": os.urandom(4096)}[damage]
    )
    with pytest.raises(caffe.CaffeFormatError, match=rf"{bad.name}: not a caffemodel: .* byte \d+"):
        caffe.read_caffemodel(bad)


def test_unmappable_file_lists_its_layers(tmp_path):
    path = tmp_path / "other.caffemodel"
    blob = np.ones((2, 2), np.float32)
    caffe.write_caffemodel(
        path, [("conv_a", "Convolution", [blob]), ("ip_b", "InnerProduct", [blob])]
    )
    with pytest.raises(ValueError, match="layers with weights: conv_a, ip_b"):
        caffe.load_caffemodel(path)


def test_caffe_config_is_the_release_network_and_input():
    from configs import default
    from deconvnet_jax import evaluation

    config = default.get_config()
    config.model.width_multiplier, config.data.normalization = 0.25, "imagenet"
    out = evaluation.caffe_config(config, "fcn8s_caffe")
    assert (out.model.name, out.model.width_multiplier) == ("fcn8s_caffe", 1.0)
    assert out.data.normalization == "caffe_bgr" and config.model.width_multiplier == 0.25
    assert out.model.bn_epsilon == 1e-9  # the fork's BN layer (CAFFE.md "BN")


def test_config_bn_epsilon_reaches_the_inference_import(tmp_path):
    """load_net passes config.model.bn_epsilon to the import: var = 1 - eps, so that the network's
    BN (x - 0) / sqrt(var + eps) * scale + shift is scale * x + shift for that eps (checked
    through one BN layer in float64 with NumPy)."""
    from configs import default
    from deconvnet_jax import evaluation

    path = tmp_path / "DeconvNet_trainval_inference.caffemodel"
    caffe.write_caffemodel(path, caffe_nets.deconvnet_layers(seed=3, div=32), version=1)
    config = default.get_config()
    config.model.width_multiplier, config.model.bn_epsilon = 1 / 32, 1e-2
    config.data.crop_size = 224
    net = evaluation.load_net(config, str(path))
    var = np.asarray(net.variables["batch_stats"]["fc"]["fc6_bn"]["var"], np.float64)
    np.testing.assert_allclose(var, 1 - 1e-2, rtol=1e-7)
    np.testing.assert_allclose(1 / np.sqrt(var + 1e-2), 1.0, rtol=1e-7)
