"""FCN-8s: exact parameter count from its layer table, encoder shared with DeconvNet, Caffe crop
offsets, bilinear upsampling, parity with the PyTorch reference, weight interop, build hook."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from configs import default as default_config
from configs import fcn8s as fcn8s_config
from deconvnet_jax.models import build_model, count_params, fcn
from deconvnet_jax.models.deconvnet import DeconvNet
from deconvnet_jax.models.fcn import FCN8s, Upsample
from deconvnet_jax.torch import weights as tw
from deconvnet_jax.torch.reference import FCN8sTorch

# The FCN-8s layer table (VGG16 convs, fc6/fc7, score and upsampling layers), typed in
# independently of the model code: (layer, kernel, in, out, has_bias, has_bn).
FCN_LAYERS = [
    ("conv1_1", 3, 3, 64, 1, 1), ("conv1_2", 3, 64, 64, 1, 1),
    ("conv2_1", 3, 64, 128, 1, 1), ("conv2_2", 3, 128, 128, 1, 1),
    ("conv3_1", 3, 128, 256, 1, 1), ("conv3_2", 3, 256, 256, 1, 1), ("conv3_3", 3, 256, 256, 1, 1),
    ("conv4_1", 3, 256, 512, 1, 1), ("conv4_2", 3, 512, 512, 1, 1), ("conv4_3", 3, 512, 512, 1, 1),
    ("conv5_1", 3, 512, 512, 1, 1), ("conv5_2", 3, 512, 512, 1, 1), ("conv5_3", 3, 512, 512, 1, 1),
    ("fc6", 7, 512, 4096, 1, 1), ("fc7", 1, 4096, 4096, 1, 1),
    ("score_fr", 1, 4096, 21, 1, 0), ("score_pool4", 1, 512, 21, 1, 0),
    ("score_pool3", 1, 256, 21, 1, 0),
    ("upscore2", 4, 21, 21, 0, 0), ("upscore_pool4", 4, 21, 21, 0, 0),
    ("upscore8", 16, 21, 21, 0, 0),
]  # fmt: skip


def table_param_count() -> int:
    return sum(
        k * k * cin * cout + bias * cout + bn * 2 * cout for _, k, cin, cout, bias, bn in FCN_LAYERS
    )


def _shapes(model, hw=(224, 224), batch=1):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((batch, *hw, 3)), train=False)
    )


def _random_variables(model, hw=(224, 224), seed=0):
    """Every parameter and BN statistic random (the score layers start at zero otherwise)."""
    variables = _shapes(model, hw)
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = np.prod(x.shape[:3])
            return rng.normal(0, np.sqrt(2 / fan_in), x.shape).astype(np.float32)
        if "_bn" in name and ("var" in name or "scale" in name):
            return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        return rng.normal(0, 0.1, x.shape).astype(np.float32)

    return jax.tree.map_with_path(perturb, variables)


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_full_size_param_count_matches_layer_table_exactly():
    variables = _shapes(FCN8s())
    assert count_params(variables["params"]) == table_param_count() == 134_514_591
    bn_channels = sum(cout for _, _, _, cout, _, bn in FCN_LAYERS if bn)
    assert count_params(variables["batch_stats"]) == 2 * bn_channels
    paths = fcn.fcn_layer_paths()
    assert set(paths) == {name for name, *_ in FCN_LAYERS}
    for name, k, cin, cout, bias, bn in FCN_LAYERS:
        node = variables["params"]
        for key in paths[name]:
            node = node[key]
        assert set(node) == ({"kernel", "bias"} if bias else {"kernel"}), name
        assert node["kernel"].shape == (k, k, cin, cout), name


def test_encoder_and_fc_share_deconvnet_paths_and_shapes():
    wm = 1 / 16
    ours = _shapes(FCN8s(width_multiplier=wm))
    theirs = _shapes(DeconvNet(width_multiplier=wm))
    for coll in ("params", "batch_stats"):
        flat_ours = jax.tree.flatten_with_path(ours[coll])[0]
        theirs_flat = dict(jax.tree.flatten_with_path(theirs[coll])[0])
        shared = [
            (p, v)
            for p, v in flat_ours
            if jax.tree_util.keystr(p[:1]).strip("[]'")
            in ("block1", "block2", "block3", "block4", "block5", "fc")
        ]
        assert len(shared) == (26 + 2 * 13 + 4 + 4 if coll == "params" else 2 * 15)
        for path, leaf in shared:
            assert theirs_flat[path].shape == leaf.shape, jax.tree_util.keystr(path)


@pytest.mark.parametrize("hw", [(224, 224), (320, 416), (256, 288), (500, 375), (37, 61)])
def test_full_size_output_is_input_sized(hw):
    model = FCN8s()
    variables = _shapes(model, hw)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, *hw, 3)), train=False), variables)
    assert out.shape == (2, *hw, 21) and out.dtype == jnp.float32


def _coord(layers):
    """Caffe coord_map: compose (scale, shift) with input = scale * output + shift per layer."""
    a, b = 1.0, 0.0
    for kind, k, s, p in layers:
        if kind == "conv":  # input = s * out - p + (k - 1) / 2
            la, lb = s, -p + (k - 1) / 2
        else:  # transposed conv: out = s * in - p + (k - 1) / 2, inverted
            la, lb = 1 / s, (p - (k - 1) / 2) / s
        a, b = a * la, a * lb + b
    return a, b


def test_crop_offsets_are_caffes_coordinate_map():
    def conv(k, s=1, p=0):
        return ("conv", k, s, p)

    def block(n, first_pad=1):  # n 3x3 convs, then the 2x2/2 pool
        return [conv(3, 1, first_pad)] + [conv(3, 1, 1)] * (n - 1) + [conv(2, 2)]

    to_pool3 = block(2, 100) + block(2) + block(3)
    to_pool4 = to_pool3 + block(3)
    to_fc7 = to_pool4 + block(3) + [conv(7), conv(1)]
    up2 = to_fc7 + [conv(1), ("deconv", 4, 2, 0)]
    up4 = up2 + [("deconv", 4, 2, 0)]
    up8 = up4 + [("deconv", 16, 8, 0)]
    # (cropped map, reference map, offset): cropped row z + offset sits where reference row z does
    for cropped, reference, offset in (
        (to_pool4 + [conv(1)], up2, fcn.CROP_POOL4),
        (to_pool3 + [conv(1)], up4, fcn.CROP_POOL3),
        (up8, [], fcn.CROP_SCORE),
    ):
        (a_c, b_c), (a_r, b_r) = _coord(cropped), _coord(reference)
        assert a_c == a_r  # same stride: the crop is a pure shift
        assert (b_r - b_c) / a_c == offset
    assert (fcn.CROP_POOL4, fcn.CROP_POOL3, fcn.CROP_SCORE) == (5, 9, 31)


def test_upsampling_starts_bilinear():
    np.testing.assert_allclose(fcn.bilinear_kernel(4)[0], [1 / 16, 3 / 16, 3 / 16, 1 / 16])
    for k, s in ((4, 2), (16, 8)):
        x = np.broadcast_to(np.arange(6.0, dtype=np.float32)[None, :, None, None], (1, 6, 5, 3))
        x = x + 10 * np.arange(3, dtype=np.float32)  # one ramp per channel
        up = Upsample(3, k, s)
        v = up.init(jax.random.key(0), x)
        y = np.asarray(up.apply(v, x))
        assert y.shape == (1, 5 * s + k, 4 * s + k, 3)
        # output z samples input coordinate (z - (k-1)/2) / s: linear interpolation of the ramp
        z = np.arange(k - s, 5 * s + 1)  # rows reached by two inputs on each side
        cols = slice(k - s, 4 * s + 1)
        expect = (z - (k - 1) / 2) / s
        for c in range(3):
            np.testing.assert_allclose(
                y[0, z, cols, c],
                np.broadcast_to(expect[:, None] + 10 * c, y[0, z, cols, c].shape),
                atol=1e-5,
            )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_parity_with_pytorch_reference_tiny_width(mode):
    wm, hw = 1 / 16, (224, 256)
    model = FCN8s(width_multiplier=wm)
    variables = _random_variables(model, hw)
    ref = FCN8sTorch(width_multiplier=wm)
    ref.load_flat(tw.to_torch_state_dict(variables, "fcn8s"))
    x = np.random.default_rng(1).standard_normal((2, *hw, 3)).astype(np.float32) * 50
    if mode == "eval":
        ref.eval()
        out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    else:
        ref.train()
        out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
            variables, x
        )
    with torch.no_grad():
        expected = ref(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    expected = expected.permute(0, 2, 3, 1).numpy()
    assert out.shape == expected.shape == (2, *hw, 21)
    assert _rel_err(np.asarray(out), expected) < 1e-4
    if mode == "train":  # running means move the same way (variances differ: biased vs unbiased)
        got = updates["batch_stats"]["block3"]["conv3_2_bn"]["mean"]
        want = ref.state_dict_flat()["conv3_2_bn.running_mean"].numpy()
        assert _rel_err(np.asarray(got), want) < 1e-4


def test_weight_round_trip_is_exact_and_bad_keys_are_named():
    model = FCN8s(width_multiplier=1 / 16)
    variables = _random_variables(model, (64, 64))
    sd = tw.to_torch_state_dict(variables, "fcn8s")
    assert "upscore8.bias" not in sd and sd["upscore8.weight"].shape == (21, 21, 16, 16)
    back = tw.from_torch_state_dict(sd, variables, "fcn8s")
    jax.tree.map(np.testing.assert_array_equal, back, variables)
    ref = FCN8sTorch(width_multiplier=1 / 16)
    ref.load_flat(sd)
    sd_torch = {k: v.numpy() for k, v in ref.state_dict_flat().items()}
    assert set(sd_torch) == set(sd)
    broken = dict(sd)
    del broken["score_pool3.bias"]
    with pytest.raises(KeyError, match="score_pool3.bias"):
        tw.from_torch_state_dict(broken, variables, "fcn8s", source="x.pth")
    broken = dict(sd, **{"fc7_bn.running_var": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="fc7_bn.running_var"):
        tw.from_torch_state_dict(broken, variables, "fcn8s")
    with pytest.raises(KeyError, match="seg_score.weight"):
        tw.from_torch_state_dict(dict(sd, **{"seg_score.weight": np.zeros(1)}), variables, "fcn8s")


def test_vgg16_import_fills_the_fcn_encoder():
    """vgg16_to_flax works on FCN variables: conv and fc6/fc7 come from the VGG state dict."""
    model = FCN8s(width_multiplier=1 / 16)
    variables = _random_variables(model, (64, 64))
    rng = np.random.default_rng(3)
    sd = {}
    convs = [(n, k) for n, k, *_ in FCN_LAYERS[:13]]
    for (name, _), idx in zip(convs, tw.VGG_PLAIN_IDX):
        kernel = variables["params"][fcn.fcn_layer_paths()[name][0]][name]["kernel"]
        out_in = kernel.shape[::-1][:2]
        sd[f"features.{idx}.weight"] = rng.normal(size=out_in + (3, 3)).astype(np.float32)
        sd[f"features.{idx}.bias"] = rng.normal(size=kernel.shape[3]).astype(np.float32)
    fc = variables["params"]["fc"]
    f6, f7 = fc["fc6"]["kernel"].shape, fc["fc7"]["kernel"].shape
    sd["classifier.0.weight"] = rng.normal(size=(f6[3], f6[2] * 49)).astype(np.float32)
    sd["classifier.0.bias"] = rng.normal(size=f6[3]).astype(np.float32)
    sd["classifier.3.weight"] = rng.normal(size=(f7[3], f7[2])).astype(np.float32)
    sd["classifier.3.bias"] = rng.normal(size=f7[3]).astype(np.float32)
    imported = tw.vgg16_to_flax(sd, variables, bn=False)
    got = imported["params"]["block2"]["conv2_1"]["kernel"]  # [3, 3, in, out]
    np.testing.assert_array_equal(got, sd["features.5.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        imported["params"]["fc"]["fc7"]["kernel"][0, 0], sd["classifier.3.weight"].T
    )
    np.testing.assert_array_equal(
        imported["params"]["upscore8"]["kernel"], variables["params"]["upscore8"]["kernel"]
    )  # head untouched


def test_build_model_hook_and_config():
    config = fcn8s_config.get_config()
    assert config.model.name == "fcn8s" and config.data.mode == "whole"
    config.model.width_multiplier = 0.25
    config.model.dtype = "bfloat16"
    model = build_model(config.model)
    assert isinstance(model, FCN8s)
    assert (model.width_multiplier, model.dtype, model.num_classes) == (0.25, jnp.bfloat16, 21)
    variables = _shapes(model, (64, 96))
    assert variables["params"]["block1"]["conv1_1"]["kernel"].dtype == jnp.float32
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 96, 3))), variables)
    assert out.shape == (1, 64, 96, 21) and out.dtype == jnp.float32
    # default.py's fields are all that build_fcn reads
    plain = ml_collections.ConfigDict(default_config.get_config().model.to_dict())
    plain.name = "fcn8s"
    assert isinstance(build_model(plain), FCN8s)


def test_remat_gives_the_same_gradients():
    x = np.random.default_rng(0).standard_normal((2, 40, 48, 3)).astype(np.float32)
    grads = []
    for remat in (False, True):
        model = FCN8s(num_classes=3, width_multiplier=1 / 16, remat=remat)
        variables = _random_variables(model, (40, 48))

        def loss(params, model=model, variables=variables):
            out, _ = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return jnp.sum(out**2)

        grads.append(jax.device_get(jax.jit(jax.grad(loss))(variables["params"])))
    # Tolerance relative to the largest gradient: the conv biases that feed a BN have zero
    # gradient mathematically, so theirs are float32 rounding noise of that scale.
    scale = max(np.abs(g).max() for g in jax.tree.leaves(grads[0]))
    assert scale > 0
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale), *grads
    )
