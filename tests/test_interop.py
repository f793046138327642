"""Flax DeconvNet vs the PyTorch reference through the weight interop; torchvision VGG16 import."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from nets import random_variables
from torch import nn

from deconvnet_jax.models.deconvnet import DeconvNet
from deconvnet_jax.torch import weights as tw
from deconvnet_jax.torch.reference import DeconvNetTorch

torch.manual_seed(0)


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _compare(width, batch, hw=(224, 224), modes=("eval", "train"), tol=1e-9):
    """Flax vs the PyTorch reference, both in float64, on random weights converted by the
    interop (float32 would flip near-tied pooling switches on another ISA)."""
    x = np.random.default_rng(1).standard_normal((batch, *hw, 3))
    with jax.enable_x64(True):
        model = DeconvNet(width_multiplier=width, dtype=jnp.float64)
        # float32 values (the .pth format's), held in float64: the conversion is exact
        variables = random_variables(model, hw=hw, dtype=np.float32)
        variables = jax.tree.map(lambda a: a.astype(np.float64), variables)
        ref = DeconvNetTorch(width_multiplier=width)
        ref.load_flat(tw.to_torch_state_dict(variables))
        ref = ref.double()
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        return _compare_modes(model, variables, ref, x, xt, modes, tol)


def _compare_modes(model, variables, ref, x, xt, modes, tol):
    for mode in modes:
        if mode == "eval":
            ref.eval()
            out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
        else:
            ref.train()
            out, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
                variables, x
            )
        with torch.no_grad():
            expected = ref(xt).permute(0, 2, 3, 1).numpy()
        assert out.dtype == x.dtype
        err = _rel_err(np.asarray(out), expected)
        assert err < tol, (mode, err)


def test_parity_tiny_width_eval_and_train_float64():
    """Width 1/16, a non-square input, eval and train mode agree to 1e-9 relative."""
    _compare(1 / 16, batch=2, hw=(224, 256))


@pytest.mark.slow
def test_parity_full_width_eval_float64():
    """Full width, eval mode (running statistics), both frameworks in float64, agree to 1e-9
    relative (train mode, i.e. batch statistics, is the tiny-width test's: the layers and the
    conversion are the same at every width).

    Why float64: float32 rounding differs with the ISA, the convolution kernel and the batch
    size, and through five pooling stages it flips near-tied switches and moves values to
    other pixels (float32 outputs differ by up to ~3e-2 between an AVX-512 and an AVX2 machine,
    measured), although the computations are the same.
    """
    _compare(1.0, batch=1, modes=("eval",))


def test_round_trips_are_exact():
    model = DeconvNet(width_multiplier=1 / 16)
    variables = random_variables(model)
    sd = tw.to_torch_state_dict(variables)
    back = tw.from_torch_state_dict(sd, variables)
    jax.tree.map(np.testing.assert_array_equal, back, variables)
    ref = DeconvNetTorch(width_multiplier=1 / 16)
    ref.load_flat(sd)
    sd_torch = {k: v.numpy() for k, v in ref.state_dict_flat().items()}
    again = tw.to_torch_state_dict(tw.from_torch_state_dict(sd_torch, variables))
    assert set(again) == set(sd_torch)
    for k in sd_torch:
        np.testing.assert_array_equal(again[k], sd_torch[k], err_msg=k)


def test_missing_and_misshaped_keys_are_named(tmp_path):
    model = DeconvNet(width_multiplier=1 / 16)
    variables = random_variables(model)
    sd = tw.to_torch_state_dict(variables)
    broken = dict(sd)
    del broken["deconv3_2.weight"]
    with pytest.raises(KeyError, match="deconv3_2.weight"):
        tw.from_torch_state_dict(broken, variables)
    broken = dict(sd)
    broken["conv2_1_bn.running_var"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="conv2_1_bn.running_var"):
        tw.from_torch_state_dict(broken, variables)
    # A real .pth through torch.save / torch.load(weights_only=True)
    torch.save(
        {"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}},
        tmp_path / "w.pth",
    )
    loaded = tw.load_torch_checkpoint(tmp_path / "w.pth")
    back = tw.from_torch_state_dict(loaded, variables)
    jax.tree.map(np.testing.assert_array_equal, back, variables)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tw.load_torch_checkpoint(tmp_path / "nope.pth")


def _torchvision_vgg16(bn: bool):
    """torchvision's VGG16(-BN) module layout (`features.N`, `classifier.0/3`), random weights."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers.append(nn.Conv2d(cin, v, 3, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        cin = v

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(
                nn.Linear(25088, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, 1000),
            )

    vgg = VGG().eval()
    if bn:
        g = torch.Generator().manual_seed(0)
        for m in vgg.features:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.data.uniform_(0.5, 1.5, generator=g)
                m.bias.data.normal_(0, 0.1, generator=g)
    return vgg


@pytest.fixture(scope="module")
def full_model():
    model = DeconvNet()
    return model, random_variables(model)


@pytest.mark.slow
@pytest.mark.parametrize("bn", [False, True])
def test_vgg16_import_reproduces_feature_maps(full_model, bn):
    model, variables = full_model
    vgg = _torchvision_vgg16(bn)
    if (
        not bn
    ):  # plain VGG: make the Flax BN layers exact identities (scale 1, shift 0, var 1 - eps)
        eps = model.bn_epsilon
        variables = jax.tree.map_with_path(
            lambda p, x: (
                np.ones_like(x)
                if "scale" in jax.tree_util.keystr(p)
                else np.full_like(x, 1 - eps)
                if "var" in jax.tree_util.keystr(p)
                else np.zeros_like(x)
                if "_bn" in jax.tree_util.keystr(p)
                else x
            ),
            variables,
        )
    sd = {k: v for k, v in vgg.state_dict().items() if not k.endswith("num_batches_tracked")}
    imported = tw.vgg16_to_flax(sd, variables)
    x = np.random.default_rng(2).standard_normal((1, 224, 224, 3)).astype(np.float32)
    _, inter = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True))(
        imported, x
    )
    pool5 = np.asarray(inter["intermediates"]["block5"]["__call__"][0][0])
    fc7 = np.asarray(inter["intermediates"]["fc"]["fc7"]["__call__"][0])
    with torch.no_grad():
        feats = vgg.features(torch.from_numpy(x).permute(0, 3, 1, 2))
        fc6 = torch.relu(vgg.classifier[0](feats.flatten(1)))
        ref_fc7 = vgg.classifier[3](fc6)
    assert _rel_err(pool5, feats.permute(0, 2, 3, 1).numpy()) < 1e-4
    if not bn:  # fc6 -> BN(identity) -> ReLU -> fc7 matches VGG's classifier exactly
        assert _rel_err(fc7[:, 0, 0, :], ref_fc7.numpy()) < 1e-4
    # the decoder is untouched
    np.testing.assert_array_equal(
        imported["params"]["seg_score"]["kernel"], variables["params"]["seg_score"]["kernel"]
    )


def test_vgg_import_missing_key_is_named(full_model):
    _, variables = full_model
    sd = {k: v for k, v in _torchvision_vgg16(False).state_dict().items()}
    del sd["classifier.0.weight"]
    with pytest.raises(KeyError, match="classifier.0.weight"):
        tw.vgg16_to_flax(sd, variables, bn=False)
