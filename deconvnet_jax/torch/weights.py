"""PyTorch state dicts <-> Flax variables, for DeconvNet and FCN-8s, and torchvision VGG16 import.

State-dict format (torch/reference.py uses it): ``<layer>.weight`` for every conv / deconv under its
original name (DeconvNet: conv1_1 ... fc6, fc7, fc6_deconv, deconv5_1 ... deconv1_2, seg_score;
FCN-8s: conv1_1 ... fc7, score_fr, score_pool4, score_pool3, upscore2, upscore_pool4, upscore8),
``<layer>.bias`` where the layer has one (not FCN's upscore*), and
``<layer>_bn.weight|bias|running_mean|running_var`` for its BatchNorm (every layer but the score /
upsampling layers). Layouts: Conv2d [out, in, kh, kw]; ConvTranspose2d [in, out, kh, kw]
(fc6_deconv, deconv*, upscore*). Flax kernels are [kh, kw, in, out], with
``kernel[y, x, i, o] == torch_weight[i, o, y, x]`` for the transposed layers.

torchvision VGG16 / VGG16-BN (``features.N.*``, ``classifier.0/3.*``) -> encoder, fc6 and fc7 of
either network: fc6's 4096 x 25088 matrix is reshaped to [4096, 512, 7, 7] (torchvision flattens
C, H, W). Plain VGG16 has no BN: the encoder's BN layers and those of fc6/fc7 keep their values.

Note: PyTorch updates running_var with the unbiased batch variance, flax with the biased one;
outputs in train mode (which normalise with the biased variance) are identical.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from deconvnet_jax import paths
from deconvnet_jax.errors import WeightsError
from deconvnet_jax.interop.trees import checked, get_path, numpy_tree, set_path, to_numpy
from deconvnet_jax.models.deconvnet import layer_paths
from deconvnet_jax.models.fcn import UPSAMPLERS, fcn_layer_paths
from deconvnet_jax.models.layers import ENCODER

VGG_CONVS = [n for _, names, _ in ENCODER for n in names]
VGG_PLAIN_IDX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # features.N of each conv
VGG_BN_IDX = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
BN_KEYS = (  # (torch BatchNorm2d key, flax collection, flax leaf)
    ("weight", "params", "scale"),
    ("bias", "params", "bias"),
    ("running_mean", "batch_stats", "mean"),
    ("running_var", "batch_stats", "var"),
)


def _layers(model: str) -> tuple[dict[str, tuple[str, ...]], set[str]]:
    """(original layer name -> Flax module path, the transposed layers) of a network."""
    if model == "deconvnet":
        paths = layer_paths()
        return paths, {n for n in paths if n == "fc6_deconv" or n.startswith("deconv")}
    if model == "fcn8s":
        return fcn_layer_paths(), {name for name, _, _ in UPSAMPLERS}
    raise ValueError(f"no PyTorch state-dict format for model {model!r}")


def _to_torch_kernel(transposed: bool, kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(2, 3, 0, 1) if transposed else kernel.transpose(3, 2, 0, 1)


def _to_flax_kernel(transposed: bool, weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1) if transposed else weight.transpose(2, 3, 1, 0)


def _bn_path(path: tuple[str, ...], layer: str) -> tuple[str, ...]:
    return path[:-1] + (layer + "_bn",)


def to_torch_state_dict(variables, model: str = "deconvnet") -> dict[str, np.ndarray]:
    """Flax variables ({'params', 'batch_stats'}) -> a NumPy state dict in the format above."""
    trees = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    paths, transposed = _layers(model)
    out = {}
    for layer, path in paths.items():
        node = get_path(trees["params"], path)
        kernel = to_numpy(node["kernel"])
        out[f"{layer}.weight"] = np.ascontiguousarray(_to_torch_kernel(layer in transposed, kernel))
        if "bias" in node:
            out[f"{layer}.bias"] = to_numpy(node["bias"])
        parent = get_path(trees["params"], path[:-1])
        if layer + "_bn" in parent:
            for key, coll, leaf in BN_KEYS:
                out[f"{layer}_bn.{key}"] = to_numpy(
                    get_path(trees[coll], _bn_path(path, layer))[leaf]
                )
    return out


def from_torch_state_dict(
    state_dict: Mapping, like_variables, model: str = "deconvnet", source: str = "state_dict"
) -> dict:
    """A state dict in the format above -> Flax variables shaped like `like_variables`.

    Every expected key is checked for presence and shape, and keys the network does not have are
    an error too (KeyError / ValueError naming `source` and the key).

    Args:
      state_dict: name -> tensor / array (e.g. ``DeconvNetTorch().state_dict_flat()``).
      like_variables: variables of the target network (arrays or ShapeDtypeStructs): the shapes,
        and which layers have a bias and a BatchNorm.
      model: "deconvnet" or "fcn8s".
      source: the name used in error messages (e.g. the checkpoint path).
    Returns:
      {'params': ..., 'batch_stats': ...} of float32 NumPy arrays.
    """
    like = {"params": like_variables["params"], "batch_stats": like_variables["batch_stats"]}
    out: dict = {"params": {}, "batch_stats": {}}
    paths, transposed = _layers(model)
    used = set()

    def take(key, shape):
        used.add(key)
        return checked(state_dict, key, shape, source)

    for layer, path in paths.items():
        node = get_path(like["params"], path)
        t = layer in transposed
        tshape = _to_torch_kernel(t, np.empty(node["kernel"].shape, np.int8)).shape
        set_path(
            out["params"], path + ("kernel",), _to_flax_kernel(t, take(f"{layer}.weight", tshape))
        )
        if "bias" in node:
            set_path(out["params"], path + ("bias",), take(f"{layer}.bias", node["bias"].shape))
        if layer + "_bn" in get_path(like["params"], path[:-1]):
            bn = _bn_path(path, layer)
            for key, coll, leaf in BN_KEYS:
                shape = get_path(like[coll], bn)[leaf].shape
                set_path(out[coll], bn + (leaf,), take(f"{layer}_bn.{key}", shape))
    extra = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
    if extra:
        raise KeyError(f"{source}: keys that {model} does not have: {extra[:5]}")
    return out


def _load_failure(error: Exception) -> str:
    """A short reason for a failed weights-only torch.load (torch's own text advises
    ``weights_only=False``, i.e. running the file's code: never repeated here)."""
    text = str(error).strip()
    if "Weights only load failed" in text:
        lines = [line.strip() for line in text.split("WeightsUnpickler error:")[-1].splitlines()]
        detail = next((line for line in lines if line), "")
        return f"not a plain tensor file: {detail[:120]}" if detail else "not a plain tensor file"
    return text.splitlines()[0][:200] if text else type(error).__name__


def load_torch_checkpoint(path) -> dict:
    """torch.load(path, weights_only=True) of a bare state dict or {"state_dict"/"model": ...}.

    Raises:
      FileNotFoundError / ValueError naming the file when it is missing or not a PyTorch state
      dict (never falls back to unpickling arbitrary objects).
    """
    import torch

    path = paths.as_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch checkpoint {path} not found")
    try:
        with paths.local_copy(path) as local:  # a remote file: a local temporary copy
            obj = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises pickle, zip and runtime errors)
        reason = _load_failure(e)
        raise WeightsError(f"{path}: not a readable PyTorch state dict ({reason})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module.").removeprefix("layers."): v for k, v in obj.items()}


def vgg16_to_flax(
    state_dict: Mapping, variables, bn: bool | None = None, source: str = "vgg16"
) -> dict:
    """torchvision VGG16 (bn=False) or VGG16-BN (bn=True; None detects) -> encoder, fc6, fc7.

    Works for DeconvNet and FCN8s (the encoder and fc6/fc7 sit at the same paths).

    Returns:
      New variables: the other layers (decoder, classifiers, unmatched BN) copied from `variables`.
    """
    if bn is None:
        bn = "features.1.running_mean" in state_dict
    out = {
        "params": numpy_tree(variables["params"]),
        "batch_stats": numpy_tree(variables["batch_stats"]),
    }
    paths = layer_paths()
    for layer, idx in zip(VGG_CONVS, VGG_BN_IDX if bn else VGG_PLAIN_IDX):
        node = get_path(out["params"], paths[layer])
        kshape = node["kernel"].shape
        w = checked(state_dict, f"features.{idx}.weight", (kshape[3], kshape[2], 3, 3), source)
        node["kernel"] = _to_flax_kernel(False, w)
        node["bias"] = checked(state_dict, f"features.{idx}.bias", node["bias"].shape, source)
        if bn:
            for key, coll, leaf in BN_KEYS:
                tree = get_path(out[coll], _bn_path(paths[layer], layer))
                tree[leaf] = checked(
                    state_dict, f"features.{idx + 1}.{key}", tree[leaf].shape, source
                )
    fc6 = get_path(out["params"], paths["fc6"])
    k6 = fc6["kernel"].shape  # [7, 7, 512, 4096]
    w6 = checked(state_dict, "classifier.0.weight", (k6[3], k6[2] * k6[0] * k6[1]), source)
    fc6["kernel"] = w6.reshape(k6[3], k6[2], k6[0], k6[1]).transpose(2, 3, 1, 0)
    fc6["bias"] = checked(state_dict, "classifier.0.bias", fc6["bias"].shape, source)
    fc7 = get_path(out["params"], paths["fc7"])
    k7 = fc7["kernel"].shape
    fc7["kernel"] = checked(state_dict, "classifier.3.weight", (k7[3], k7[2]), source).T[None, None]
    fc7["bias"] = checked(state_dict, "classifier.3.bias", fc7["bias"].shape, source)
    return out
