"""FCN-8s: PyTorch state dict <-> Flax variables (models/fcn.py <-> torch_reference_fcn.py).

State-dict format: `<layer>.weight` for every conv and upsampling layer under its original name
(conv1_1 ... conv5_3, fc6, fc7, score_fr, score_pool4, score_pool3, upscore2, upscore_pool4,
upscore8), `<layer>.bias` for all but the upsampling layers (bias-free, as in Caffe), and
`<layer>_bn.weight|bias|running_mean|running_var` for the conv and fc layers. Layouts: Conv2d
[out, in, kh, kw]; ConvTranspose2d (upscore*) [in, out, kh, kw]; the Flax kernels are [kh, kw, in,
out]. The encoder, fc6 and fc7 sit at DeconvNet's paths, so
`interop.torch_weights.vgg16_to_flax` also initialises an FCN8s from torchvision VGG16(-BN).
"""

from __future__ import annotations

import numpy as np

from deconvnet_jax.interop.torch_weights import BN_KEYS, _checked, _get, _np, _set
from deconvnet_jax.models.fcn import SCORES, UPSAMPLERS, fcn_layer_paths

TRANSPOSED = {name for name, _, _ in UPSAMPLERS}
NO_BN = set(SCORES) | TRANSPOSED


def _to_torch_kernel(layer: str, kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(2, 3, 0, 1) if layer in TRANSPOSED else kernel.transpose(3, 2, 0, 1)


def _to_flax_kernel(layer: str, weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1) if layer in TRANSPOSED else weight.transpose(2, 3, 1, 0)


def fcn_to_torch_state_dict(variables) -> dict[str, np.ndarray]:
    """FCN8s Flax variables ({'params', 'batch_stats'}) -> NumPy state dict (format above)."""
    trees = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    out = {}
    for layer, path in fcn_layer_paths().items():
        node = _get(trees["params"], path)
        out[f"{layer}.weight"] = np.ascontiguousarray(_to_torch_kernel(layer, _np(node["kernel"])))
        if layer not in TRANSPOSED:
            out[f"{layer}.bias"] = _np(node["bias"])
        if layer in NO_BN:
            continue
        bn_path = path[:-1] + (layer + "_bn",)
        for key, coll, leaf in BN_KEYS:
            out[f"{layer}_bn.{key}"] = _np(_get(trees[coll], bn_path)[leaf])
    return out


def fcn_from_torch_state_dict(state_dict: dict, like_variables, source: str = "state_dict") -> dict:
    """An FCN-8s state dict -> Flax variables shaped like `like_variables`.

    Every expected key is checked for presence and shape (KeyError / ValueError naming `source`
    and the key); keys the network does not have are an error too.

    Args:
      state_dict: name -> tensor/array in the format above (e.g. FCN8sTorch.state_dict_flat()).
      like_variables: variables of the target FCN8s (arrays or ShapeDtypeStructs) for the shapes.
      source: name used in error messages (e.g. the checkpoint path).
    Returns:
      {'params': ..., 'batch_stats': ...} of float32 NumPy arrays.
    """
    like = {"params": like_variables["params"], "batch_stats": like_variables["batch_stats"]}
    out: dict = {"params": {}, "batch_stats": {}}
    used = set()
    for layer, path in fcn_layer_paths().items():
        node = _get(like["params"], path)
        kshape = tuple(node["kernel"].shape)
        tshape = _to_torch_kernel(layer, np.empty(kshape, np.int8)).shape
        w = _checked(state_dict, f"{layer}.weight", tshape, source)
        _set(out["params"], path + ("kernel",), _to_flax_kernel(layer, w))
        used.add(f"{layer}.weight")
        if layer not in TRANSPOSED:
            bias = _checked(state_dict, f"{layer}.bias", node["bias"].shape, source)
            _set(out["params"], path + ("bias",), bias)
            used.add(f"{layer}.bias")
        if layer in NO_BN:
            continue
        bn_path = path[:-1] + (layer + "_bn",)
        for key, coll, leaf in BN_KEYS:
            shape = _get(like[coll], bn_path)[leaf].shape
            value = _checked(state_dict, f"{layer}_bn.{key}", shape, source)
            _set(out[coll], bn_path + (leaf,), value)
            used.add(f"{layer}_bn.{key}")
    extra = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
    if extra:
        raise KeyError(f"{source}: keys that FCN-8s does not have: {extra[:5]}")
    return out
