"""DeconvNet structure: exact parameter count from PAPER.md, shapes, BN modes, dtype, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from deconvnet_jax.models import build_model, count_params
from deconvnet_jax.models.deconvnet import DeconvNet, layer_paths

# PAPER.md's network table, typed in independently of the model code: (layer, kernel, in, out).
PAPER_LAYERS = [
    ("conv1_1", 3, 3, 64), ("conv1_2", 3, 64, 64),
    ("conv2_1", 3, 64, 128), ("conv2_2", 3, 128, 128),
    ("conv3_1", 3, 128, 256), ("conv3_2", 3, 256, 256), ("conv3_3", 3, 256, 256),
    ("conv4_1", 3, 256, 512), ("conv4_2", 3, 512, 512), ("conv4_3", 3, 512, 512),
    ("conv5_1", 3, 512, 512), ("conv5_2", 3, 512, 512), ("conv5_3", 3, 512, 512),
    ("fc6", 7, 512, 4096), ("fc7", 1, 4096, 4096), ("fc6_deconv", 7, 4096, 512),
    ("deconv5_1", 3, 512, 512), ("deconv5_2", 3, 512, 512), ("deconv5_3", 3, 512, 512),
    ("deconv4_1", 3, 512, 512), ("deconv4_2", 3, 512, 512), ("deconv4_3", 3, 512, 256),
    ("deconv3_1", 3, 256, 256), ("deconv3_2", 3, 256, 256), ("deconv3_3", 3, 256, 128),
    ("deconv2_1", 3, 128, 128), ("deconv2_2", 3, 128, 64),
    ("deconv1_1", 3, 64, 64), ("deconv1_2", 3, 64, 64),
    ("seg_score", 1, 64, 21),
]  # fmt: skip


def paper_param_count() -> int:
    total = 0
    for name, k, cin, cout in PAPER_LAYERS:
        total += k * k * cin * cout + cout  # kernel + bias
        if name != "seg_score":
            total += 2 * cout  # BN scale + shift
    return total


def _shapes(model, hw=(224, 224), batch=1):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((batch, *hw, 3)), train=False)
    )


def test_full_size_param_count_matches_paper_exactly():
    variables = _shapes(DeconvNet())
    assert count_params(variables["params"]) == paper_param_count() == 251_805_653
    # BN running mean + var for every BN channel.
    bn_channels = sum(c for n, _, _, c in PAPER_LAYERS if n != "seg_score")
    assert count_params(variables["batch_stats"]) == 2 * bn_channels
    fc = variables["params"]["fc"]
    assert fc["fc6"]["kernel"].shape == (7, 7, 512, 4096)
    assert fc["fc6_deconv"]["kernel"].shape == (7, 7, 4096, 512)


def test_every_paper_layer_has_its_original_name():
    variables = _shapes(DeconvNet(width_multiplier=1 / 16))
    paths = layer_paths()
    assert set(paths) == {name for name, *_ in PAPER_LAYERS}
    for name, k, _, _ in PAPER_LAYERS:
        node = variables["params"]
        for key in paths[name]:
            node = node[key]
        assert set(node) == {"kernel", "bias"}
        assert node["kernel"].shape[:2] == (k, k)
        if name != "seg_score":
            bn = variables["params"]
            for key in paths[name][:-1] + (name + "_bn",):
                bn = bn[key]
            assert set(bn) == {"scale", "bias"}


@pytest.mark.parametrize("hw", [(224, 224), (320, 416), (256, 288)])
def test_full_size_output_shapes_any_multiple_of_32(hw):
    model = DeconvNet()
    variables = _shapes(model, hw)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, *hw, 3)), train=False), variables)
    assert out.shape == (2, *hw, 21) and out.dtype == jnp.float32


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match=">= 224"):
        _shapes(DeconvNet(width_multiplier=1 / 16), (192, 224))


@pytest.fixture(scope="module")
def tiny():
    model = DeconvNet(width_multiplier=1 / 16)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 224, 256, 3)), jnp.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    return model, variables, x


def test_train_mode_updates_batch_stats_eval_does_not(tiny):
    model, variables, x = tiny
    out, state = model.apply(
        variables, x, train=True, mutable=["batch_stats"], capture_intermediates=True
    )
    logits, inter = out, state["intermediates"]
    assert logits.shape == (2, 224, 256, 21)
    # Running mean of conv1_1's BN = 0.9 * 0 + 0.1 * batch mean of conv1_1's output.
    conv_out = inter["block1"]["conv1_1"]["__call__"][0]
    new_mean = state["batch_stats"]["block1"]["conv1_1_bn"]["mean"]
    np.testing.assert_allclose(
        np.asarray(new_mean), 0.1 * np.asarray(conv_out).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    # Eval mode: no batch_stats update requested, and its output uses the running statistics.
    before = jax.tree.map(np.asarray, variables["batch_stats"])
    eval_out, eval_state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, before, eval_state["batch_stats"])
    assert not np.allclose(np.asarray(eval_out), np.asarray(logits))


def test_remat_and_unpool_impls_give_identical_gradients(tiny):
    _, variables, x = tiny
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 21, (2, 224, 256)))

    def grads(model):
        def loss(p):
            logits, _ = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))

        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    base_loss, base = grads(DeconvNet(width_multiplier=1 / 16, unpool_impl="scatter"))
    for model in (
        DeconvNet(width_multiplier=1 / 16, unpool_impl="window"),
        DeconvNet(width_multiplier=1 / 16, remat=True),
    ):
        loss, g = grads(model)
        assert np.isclose(float(loss), float(base_loss), rtol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6
            ),
            g,
            base,
        )


def test_bfloat16_compute_keeps_float32_params():
    config = default_config.get_config()
    config.model.width_multiplier = 1 / 16
    config.model.dtype = "bfloat16"
    model = build_model(config.model)
    variables = _shapes(model)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    _, inter = jax.eval_shape(
        lambda v: model.apply(
            v, jnp.zeros((1, 224, 224, 3)), train=False, capture_intermediates=True
        ),
        variables,
    )
    conv = inter["intermediates"]["block3"]["conv3_1"]["__call__"][0]
    assert conv.dtype == jnp.bfloat16
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 224, 224, 3))), variables)
    assert out.dtype == jnp.float32


def test_decoder_init_release_std_001_or_he_and_the_encoder_unchanged():
    """config.model.decoder_init: "release" draws fc6_deconv / deconv* / seg_score kernels from
    N(0, 0.01^2) (the release's prototxt); "he" from the encoder's He-normal, std
    sqrt(2 / (k * k * in)). The encoder and fc6/fc7 are the same draws either way (one key
    stream), so the default reproduces earlier runs."""
    config = default_config.get_config().model
    config.width_multiplier = 1 / 32
    params = {}
    for name in ("release", "he"):
        config.decoder_init = name
        model = build_model(config)
        init = jax.jit(lambda m=model: m.init(jax.random.key(3), jnp.zeros((1, 224, 224, 3))))
        params[name] = {
            "/".join(str(p.key) for p in path): np.asarray(leaf)
            for path, leaf in jax.tree.leaves_with_path(init()["params"])
        }
    decoder = ("fc/fc6_deconv/", "dblock", "seg_score/")
    checked = 0
    for key, release in params["release"].items():
        he = params["he"][key]
        if not any(key.startswith(d) for d in decoder):
            np.testing.assert_array_equal(he, release, err_msg=key)
            continue
        if not key.endswith("/kernel") or release.size < 500:
            continue  # biases (zeros either way); too few values for a std
        fan_in = int(np.prod(release.shape[:-1]))
        np.testing.assert_allclose(release.std(), 0.01, rtol=0.1, err_msg=key)
        np.testing.assert_allclose(he.std(), np.sqrt(2 / fan_in), rtol=0.1, err_msg=key)
        checked += 1
    assert checked >= 9, checked  # fc6_deconv, deconv5_x, deconv4_x, 2 of deconv3_x at 1/32
    with pytest.raises(ValueError, match="decoder_init"):
        DeconvNet(width_multiplier=1 / 32, decoder_init="xavier").init(
            jax.random.key(0), jnp.zeros((1, 224, 224, 3))
        )
