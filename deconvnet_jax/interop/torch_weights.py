"""PyTorch weights <-> Flax variables.

DeconvNet state-dict format (both directions; deconvnet_jax.torch_reference uses it):
  `<layer>.weight`, `<layer>.bias` for every conv/deconv under its original name (conv1_1 ... fc6,
  fc7, fc6_deconv, deconv5_1 ... deconv1_2, seg_score). Layouts: Conv2d [out, in, kh, kw]
  (conv*, fc6, fc7, seg_score); ConvTranspose2d [in, out, kh, kw] (fc6_deconv, deconv*).
  `<layer>_bn.weight|bias|running_mean|running_var` for its BatchNorm (not seg_score).
Flax: nn.Conv kernels are [kh, kw, in, out]; the Deconv kernels [kh, kw, in, out] with
kernel[y, x, i, o] == torch_weight[i, o, y, x].

torchvision VGG16 / VGG16-BN (`features.N.*`, `classifier.0/3.*`) -> encoder, fc6 and fc7: fc6's
4096 x 25088 matrix is reshaped to [4096, 512, 7, 7] (torchvision flattens C, H, W). Plain VGG16
has no BN: the encoder's BN layers and the BN of fc6/fc7 keep the values of `variables`.

Note: PyTorch updates running_var with the unbiased batch variance, flax with the biased one;
outputs in train mode (which normalise with the biased variance) are identical.
"""

from __future__ import annotations

import pathlib

import numpy as np

from deconvnet_jax.models.deconvnet import ENCODER, layer_paths

TRANSPOSED = {"fc6_deconv"} | {n for n in layer_paths() if n.startswith("deconv")}
VGG_CONVS = [n for _, names, _ in ENCODER for n in names]
VGG_PLAIN_IDX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG_BN_IDX = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
BN_KEYS = (
    ("weight", "params", "scale"),
    ("bias", "params", "bias"),
    ("running_mean", "batch_stats", "mean"),
    ("running_var", "batch_stats", "var"),
)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _to_torch_kernel(layer: str, kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(2, 3, 0, 1) if layer in TRANSPOSED else kernel.transpose(3, 2, 0, 1)


def _to_flax_kernel(layer: str, weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1) if layer in TRANSPOSED else weight.transpose(2, 3, 1, 0)


def flax_to_torch_state_dict(variables) -> dict[str, np.ndarray]:
    """Flax DeconvNet variables -> state dict (NumPy arrays) in the format above."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    out = {}
    for layer, path in layer_paths().items():
        node = _get(params, path)
        out[f"{layer}.weight"] = np.ascontiguousarray(_to_torch_kernel(layer, _np(node["kernel"])))
        out[f"{layer}.bias"] = _np(node["bias"])
        if layer == "seg_score":
            continue
        bn_path = path[:-1] + (layer + "_bn",)
        trees = {"params": params, "batch_stats": stats}
        for key, coll, leaf in BN_KEYS:
            out[f"{layer}_bn.{key}"] = _np(_get(trees[coll], bn_path)[leaf])
    return out


def _checked(sd: dict, key: str, shape: tuple, source: str) -> np.ndarray:
    if key not in sd:
        raise KeyError(f"{source}: missing key {key!r}")
    value = _np(sd[key]).astype(np.float32)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}"
        )
    return value


def torch_state_dict_to_flax(state_dict: dict, like_variables, source: str = "state_dict") -> dict:
    """A DeconvNet state dict -> Flax variables shaped like `like_variables` (every key checked)."""
    params, stats = {}, {}
    like_p, like_s = like_variables["params"], like_variables["batch_stats"]
    for layer, path in layer_paths().items():
        node = _get(like_p, path)
        kshape = tuple(node["kernel"].shape)
        tshape = _to_torch_kernel(layer, np.empty(kshape, np.int8)).shape
        w = _checked(state_dict, f"{layer}.weight", tshape, source)
        _set(params, path + ("kernel",), _to_flax_kernel(layer, w))
        _set(
            params,
            path + ("bias",),
            _checked(state_dict, f"{layer}.bias", node["bias"].shape, source),
        )
        if layer == "seg_score":
            continue
        bn_path = path[:-1] + (layer + "_bn",)
        trees_like = {"params": like_p, "batch_stats": like_s}
        trees_out = {"params": params, "batch_stats": stats}
        for key, coll, leaf in BN_KEYS:
            shape = _get(trees_like[coll], bn_path)[leaf].shape
            _set(
                trees_out[coll],
                bn_path + (leaf,),
                _checked(state_dict, f"{layer}_bn.{key}", shape, source),
            )
    return {"params": params, "batch_stats": stats}


def load_torch_checkpoint(path) -> dict:
    """torch.load(path, weights_only=True) of a bare state dict or {"state_dict"/"model": ...}."""
    import torch  # noqa: PLC0415

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch checkpoint {path} not found")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module.").removeprefix("layers."): v for k, v in obj.items()}


def vgg16_to_flax(
    state_dict: dict, variables, bn: bool | None = None, source: str = "vgg16"
) -> dict:
    """torchvision VGG16 (bn=False) or VGG16-BN (bn=True; None detects) -> encoder, fc6, fc7.

    Returns new variables (the decoder, classifier and unmatched BN layers copied from `variables`).
    """
    import copy  # noqa: PLC0415

    if bn is None:
        bn = "features.1.running_mean" in state_dict
    out = {
        "params": copy.deepcopy(_as_np_tree(variables["params"])),
        "batch_stats": copy.deepcopy(_as_np_tree(variables["batch_stats"])),
    }
    paths = layer_paths()
    for layer, idx in zip(VGG_CONVS, VGG_BN_IDX if bn else VGG_PLAIN_IDX):
        node = _get(out["params"], paths[layer])
        kshape = node["kernel"].shape
        w = _checked(state_dict, f"features.{idx}.weight", (kshape[3], kshape[2], 3, 3), source)
        node["kernel"] = _to_flax_kernel(layer, w)
        node["bias"] = _checked(state_dict, f"features.{idx}.bias", node["bias"].shape, source)
        if bn:
            bn_path = paths[layer][:-1] + (layer + "_bn",)
            for key, coll, leaf in BN_KEYS:
                tree = _get(out[coll], bn_path)
                tree[leaf] = _checked(
                    state_dict, f"features.{idx + 1}.{key}", tree[leaf].shape, source
                )
    fc6 = _get(out["params"], paths["fc6"])
    k6 = fc6["kernel"].shape  # [7, 7, 512, 4096]
    w6 = _checked(state_dict, "classifier.0.weight", (k6[3], k6[2] * k6[0] * k6[1]), source)
    fc6["kernel"] = w6.reshape(k6[3], k6[2], k6[0], k6[1]).transpose(2, 3, 1, 0)
    fc6["bias"] = _checked(state_dict, "classifier.0.bias", fc6["bias"].shape, source)
    fc7 = _get(out["params"], paths["fc7"])
    k7 = fc7["kernel"].shape
    fc7["kernel"] = _checked(state_dict, "classifier.3.weight", (k7[3], k7[2]), source).T[
        None, None
    ]
    fc7["bias"] = _checked(state_dict, "classifier.3.bias", fc7["bias"].shape, source)
    return out


def _as_np_tree(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _as_np_tree(v) for k, v in tree.items()}
    return np.asarray(tree)
