"""Caffe ``.caffemodel`` files without Caffe or protoc (CAFFE.md "Wire format", "Blob layouts").

- ``read_caffemodel(path)``: layer name -> blobs (NumPy float32 / float64 arrays, shaped) of a V1
  (``layers``, the release's fork) or V2 (``layer``) NetParameter; legacy 4-D (num, channels,
  height, width) or ``shape`` blobs, packed or unpacked ``data`` / ``double_data``; unknown fields
  are skipped. The file is read once into one buffer; packed arrays are ``np.frombuffer`` views
  of it (no per-float work, no second copy).
- ``write_caffemodel(path, layers, version=1|2)``: the inverse, for tests and benchmarks.
- ``caffemodel_to_flax(path, like, model)`` (the ``.caffemodel`` slot of weights.load_weights) and
  ``load_caffemodel(path) -> (model, variables)``: recognise the release's DeconvNet and ImageNet
  VGG16 (``_conv`` or InnerProduct fc6 / fc7) by their layer names.

DeconvNet BN: the fork's BN layer holds (scale, shift) only. INFERENCE files (the statistics folded
in, y = scale * x + shift) become BatchNorm with mean 0 and var 1 - epsilon, which computes
scale * x + shift up to rounding. LEARN-mode files (stage_1/2_train_result) have no statistics:
params load, ``batch_stats`` are placeholders (mean 0, var 1) and a ``MissingBatchStatsWarning``
says how to recompute them. The mode is not stored in the weights: by default a file whose name
contains "inference" is INFERENCE, any other LEARN (``bn_mode`` overrides).
"""

from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence

import jax
import numpy as np

from deconvnet_jax import paths
from deconvnet_jax.interop import protowire as pw
from deconvnet_jax.interop.trees import get_path, numpy_tree
from deconvnet_jax.models.deconvnet import layer_paths
from deconvnet_jax.models.fcn import CAFFE_LAYERS, fcn_layer_paths
from deconvnet_jax.models.layers import ENCODER

# NetParameter / V1 / V2 layer / BlobProto field numbers (CAFFE.md).
NET_LAYERS_V1, NET_LAYER_V2 = 2, 100
V1_NAME, V1_TYPE, V1_BLOBS = 4, 5, 6
V2_NAME, V2_TYPE, V2_BLOBS = 1, 2, 7
B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH, B_DATA, B_SHAPE, B_DOUBLE = 1, 2, 3, 4, 5, 7, 8
V1_TYPES = {
    "Convolution": 4,
    "Deconvolution": 39,
    "BN": 43,
    "ReLU": 18,
    "Pooling": 17,
    "Unpooling": 42,
    "Dropout": 6,
    "Crop": 40,
    "Eltwise": 25,
    "InnerProduct": 14,
    "SoftmaxWithLoss": 21,
}


class CaffeFormatError(ValueError):
    """A file that is not a readable caffemodel; the message names the file and the byte offset."""


class MissingBatchStatsWarning(UserWarning):
    """A LEARN-mode DeconvNet file: BN statistics must be recomputed before evaluation."""


def read_caffemodel(path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its blobs (shaped arrays) for every layer of the file that has blobs.

    Raises:
      FileNotFoundError if missing; CaffeFormatError naming the file and the byte offset when the
      bytes are not a NetParameter with layers (empty, truncated, random, another format).
    """
    path = paths.as_path(path)
    with paths.local_copy(path) as local:  # a remote file: a local temporary copy
        size = os.path.getsize(local)
        buf = bytearray(size)
        with open(local, "rb", buffering=0) as f:
            if f.readinto(buf) != size:
                raise CaffeFormatError(f"{path}: short read")
    try:
        return _parse_net(memoryview(buf), size)
    except pw.WireError as e:
        raise CaffeFormatError(f"{path}: not a caffemodel: {e} at byte {e.offset}") from None


def _parse_net(buf: memoryview, size: int) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    n_layers = 0
    for number, wire, value, at in pw.fields(buf, 0, size):
        if number in (NET_LAYERS_V1, NET_LAYER_V2):
            if wire != pw.LEN:
                raise pw.WireError(f"NetParameter field {number} is not a message", at)
            n_layers += 1
            name, blobs = _parse_layer(buf, *value, v1=number == NET_LAYERS_V1)
            if blobs:
                out[name] = blobs
    if n_layers == 0:
        raise pw.WireError("no layers (NetParameter fields 2 / 100) found", 0)
    return out


def _parse_layer(buf: memoryview, start: int, end: int, v1: bool) -> tuple[str, list[np.ndarray]]:
    name_field, blobs_field = (V1_NAME, V1_BLOBS) if v1 else (V2_NAME, V2_BLOBS)
    name, blobs = None, []
    for number, wire, value, at in pw.fields(buf, start, end):
        if number == name_field and wire == pw.LEN:
            try:
                name = bytes(buf[value[0] : value[1]]).decode("utf-8")
            except UnicodeDecodeError:
                raise pw.WireError("layer name is not UTF-8", at) from None
        elif number == blobs_field and wire == pw.LEN:
            blobs.append(_parse_blob(buf, *value, at=at))
    if name is None:
        raise pw.WireError("layer without a name", start)
    return name, blobs


def _parse_blob(buf: memoryview, start: int, end: int, at: int) -> np.ndarray:
    legacy = {B_NUM: 1, B_CHANNELS: 1, B_HEIGHT: 1, B_WIDTH: 1}
    has_legacy, shape, data = False, None, []
    pos, more = start, True
    while more:  # restarted after each run of unpacked values
        more = False
        for number, wire, value, tag_at in pw.fields(buf, pos, end):
            if number in legacy and wire == pw.VARINT:
                legacy[number], has_legacy = value, True
            elif number == B_SHAPE and wire == pw.LEN:
                shape = _parse_shape(buf, *value)
            elif number in (B_DATA, B_DOUBLE):
                dtype = np.dtype("<f4" if number == B_DATA else "<f8")
                if wire == pw.LEN:
                    data.append(_packed(buf, *value, dtype, tag_at))
                elif wire == (pw.FIXED32 if number == B_DATA else pw.FIXED64):
                    arr, pos = _unpacked_run(buf, tag_at, end, dtype)
                    data.append(arr)
                    more = True
                    break
    return _finish_blob(data, legacy, shape, has_legacy, at)


def _packed(buf: memoryview, start: int, end: int, dtype: np.dtype, at: int) -> np.ndarray:
    if (end - start) % dtype.itemsize:
        raise pw.WireError(f"packed array of {end - start} bytes is not {dtype} values", at)
    return np.frombuffer(buf, dtype, (end - start) // dtype.itemsize, start)


def _unpacked_run(buf: memoryview, start: int, end: int, dtype: np.dtype):
    """The run of consecutive one-value fields starting at `start` (tag byte + value each), as a
    strided view; returns (values, position after the run)."""
    stride = 1 + dtype.itemsize
    tag = buf[start]
    n_max = (end - start) // stride
    tags = np.ndarray((n_max,), np.uint8, buf, start, (stride,))
    n = int(np.argmin(tags == tag)) if not np.all(tags == tag) else n_max
    values = np.ndarray((n,), dtype, buf, start + 1, (stride,))
    return values, start + n * stride


def _parse_shape(buf: memoryview, start: int, end: int) -> list[int]:
    dims: list[int] = []
    for number, wire, value, _ in pw.fields(buf, start, end):
        if number == 1 and wire == pw.VARINT:
            dims.append(value)
        elif number == 1 and wire == pw.LEN:
            pos, stop = value
            while pos < stop:
                d, pos = pw.read_varint(buf, pos, stop)
                dims.append(d)
    return dims


def _finish_blob(data, legacy, shape, has_legacy, at: int) -> np.ndarray:
    if shape is None:
        shape = [legacy[k] for k in (B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH)] if has_legacy else None
    values = data[0] if len(data) == 1 else np.concatenate(data) if data else np.zeros(0, "<f4")
    if shape is None:
        shape = [values.size]
    if int(np.prod(shape, dtype=np.int64)) != values.size:
        raise pw.WireError(f"blob of shape {shape} holds {values.size} values", at)
    return values.reshape(shape)


def write_caffemodel(
    path,
    layers: Sequence[tuple[str, str, Sequence[np.ndarray]]],
    version: int = 1,
    legacy_shape: bool | None = None,
    packed: bool = True,
    name: str = "net",
) -> None:
    """Writes a NetParameter with `layers` ((name, V2 type string, blobs)).

    Args:
      version: 1 (``layers``, V1 enum types: what the release's fork writes) or 2 (``layer``).
      legacy_shape: num/channels/height/width (4-D, padded with leading 1s) instead of ``shape``;
        default: legacy for V1, ``shape`` for V2.
      packed: float data packed (the usual) or one field per value.
    Blobs of float64 go to ``double_data``, all others to ``data`` as float32. Streams the arrays
    to the file without copying them whole.
    """
    legacy = version == 1 if legacy_shape is None else legacy_shape
    with open(path, "wb") as f:
        f.write(pw.len_field(1, name.encode()))
        for lname, ltype, blobs in layers:
            pieces = [pw.len_field(V1_NAME if version == 1 else V2_NAME, lname.encode())]
            if version == 1:
                pieces.append(pw.varint_field(V1_TYPE, V1_TYPES[ltype]))
            else:
                pieces.append(pw.len_field(V2_TYPE, ltype.encode()))
            for blob in blobs:
                body = _blob_pieces(np.asarray(blob), legacy, packed)
                blob_len = sum(len(p) for p in body)
                bf = V1_BLOBS if version == 1 else V2_BLOBS
                pieces += [pw.tag_bytes(bf, pw.LEN) + pw.varint_bytes(blob_len), *body]
            layer_len = sum(len(p) for p in pieces)
            lf = NET_LAYERS_V1 if version == 1 else NET_LAYER_V2
            f.write(pw.tag_bytes(lf, pw.LEN) + pw.varint_bytes(layer_len))
            for p in pieces:
                f.write(p)


def _blob_pieces(blob: np.ndarray, legacy: bool, packed: bool) -> list:
    shape = list(blob.shape)
    if legacy:
        if len(shape) > 4:
            raise ValueError(f"a legacy blob has at most 4 axes, got {shape}")
        head = b"".join(
            pw.varint_field(n, d) for n, d in zip((1, 2, 3, 4), [1] * (4 - len(shape)) + shape)
        )
    else:
        dims = b"".join(pw.varint_bytes(d) for d in shape)
        head = pw.len_field(B_SHAPE, pw.len_field(1, dims))
    double = blob.dtype == np.float64
    values = np.ascontiguousarray(blob, "<f8" if double else "<f4").reshape(-1)
    number = B_DOUBLE if double else B_DATA
    if packed:
        raw = memoryview(values).cast("B")
        return [head, pw.tag_bytes(number, pw.LEN) + pw.varint_bytes(len(raw)), raw]
    tag = pw.tag_bytes(number, pw.FIXED64 if double else pw.FIXED32)
    rec = np.zeros(values.size, [("t", "u1"), ("v", values.dtype)])
    rec["t"], rec["v"] = tag[0], values
    return [head, memoryview(rec).cast("B")]


# ---- mapping to the networks -------------------------------------------------------------------

VGG_LAYERS = tuple(n for _, names, _ in ENCODER for n in names) + ("fc6", "fc7")


def deconvnet_caffe_names() -> dict[str, tuple[str, str | None]]:
    """Module name here -> (the release's layer name, its BN layer's name or None)."""
    out = {}
    for layer in layer_paths():
        if layer.startswith("conv"):
            out[layer] = (layer, "bn" + layer[4:])
        elif layer in ("fc6", "fc7"):
            out[layer] = (layer, "bn" + layer)
        elif layer == "fc6_deconv":
            out[layer] = ("fc6-deconv", "fc6-deconv-bn")
        elif layer.startswith("deconv"):
            out[layer] = (layer, "debn" + layer[6:])
        else:
            out[layer] = ("seg-score-voc", None)
    return out


def detect(blobs: Mapping[str, list]) -> str:
    """ "deconvnet", "fcn8s_caffe" or "vgg16" from the layer names, or a ValueError listing them."""
    names = set(blobs)
    if {"fc6-deconv", "seg-score-voc"} <= names:
        return "deconvnet"
    if {"score-fr", "score2", "upsample"} <= names:
        return "fcn8s_caffe"
    if set(VGG_LAYERS) <= names:
        return "vgg16"
    raise ValueError(
        "not a DeconvNet, public FCN-8s or VGG16 caffemodel; layers with weights: "
        + ", ".join(blobs)
    )


def _blob(blobs, layer: str, i: int, shape, source: str, dtype=np.float32) -> np.ndarray:
    if layer not in blobs or len(blobs[layer]) <= i:
        raise KeyError(f"{source}: layer {layer!r} has no blob {i}")
    value = blobs[layer][i]
    if value.size != int(np.prod(shape)):
        raise ValueError(
            f"{source}: layer {layer!r} blob {i} has shape {value.shape}, expected {tuple(shape)}"
        )
    return np.asarray(value, dtype).reshape(shape)


def _put_kernel(node: dict, blobs, layer: str, transposed: bool, source: str) -> None:
    """node's kernel (or frozen_kernel) and bias from a Caffe conv / deconv layer's blobs."""
    key = "kernel" if "kernel" in node else "frozen_kernel"
    (kh, kw, cin, cout), dt = node[key].shape, node[key].dtype
    if transposed:  # [in, out, kh, kw]
        w = _blob(blobs, layer, 0, (cin, cout, kh, kw), source, dt).transpose(2, 3, 0, 1)
    else:  # [out, in, kh, kw] (InnerProduct [out, in * kh * kw] reshapes to it)
        w = _blob(blobs, layer, 0, (cout, cin, kh, kw), source, dt).transpose(2, 3, 1, 0)
    node[key] = np.ascontiguousarray(w)
    if "bias" in node:
        node["bias"] = _blob(blobs, layer, 1, node["bias"].shape, source, dt)


def _deconvnet(blobs, out: dict, bn_mode: str, eps: float, source: str) -> None:
    paths = layer_paths()
    for layer, (cname, bn_name) in deconvnet_caffe_names().items():
        transposed = layer == "fc6_deconv" or layer.startswith("deconv")
        _put_kernel(get_path(out["params"], paths[layer]), blobs, cname, transposed, source)
        if bn_name is None:
            continue
        bn_path = paths[layer][:-1] + (layer + "_bn",)
        bn, stats = get_path(out["params"], bn_path), get_path(out["batch_stats"], bn_path)
        for i, leaf in enumerate(("scale", "bias")):
            bn[leaf] = _blob(blobs, bn_name, i, bn[leaf].shape, source, bn[leaf].dtype)
        stats["mean"] = np.zeros_like(stats["mean"])
        # INFERENCE: (x - 0) / sqrt(var + eps) == x, so BN computes scale * x + shift.
        var = (1.0 - eps) if bn_mode == "inference" else 1.0
        stats["var"] = np.full_like(stats["var"], var)


def _fcn8s_caffe(blobs, out: dict, source: str) -> None:
    for cname in VGG_LAYERS + tuple(CAFFE_LAYERS):
        name = CAFFE_LAYERS.get(cname, cname)
        node = get_path(out["params"], fcn_layer_paths()[name])
        _put_kernel(node, blobs, cname, cname in ("score2", "score4", "upsample"), source)


def _vgg16(blobs, out: dict, model: str, source: str) -> None:
    """Encoder + fc6/fc7 (their BN layers, if any, keep `out`'s values)."""
    paths = layer_paths() if model == "deconvnet" else fcn_layer_paths()
    for layer in VGG_LAYERS:
        _put_kernel(get_path(out["params"], paths[layer]), blobs, layer, False, source)


def bn_mode_of(path) -> str:
    """ "inference" if the file name says so (DeconvNet_trainval_inference.caffemodel), else
    "learn" (stage_1/2_train_result.caffemodel): the mode is not stored with the weights."""
    return "inference" if "inference" in paths.as_path(path).name.lower() else "learn"


def caffemodel_to_flax(
    path, like, model: str = "deconvnet", bn_mode: str | None = None, bn_epsilon: float = 1e-5
) -> dict:
    """A caffemodel's weights in variables shaped like `like` (the .caffemodel slot of
    weights.load_weights).

    Args:
      path: a DeconvNet, public FCN-8s or VGG16 caffemodel (detect()).
      like: variables of the target network; a VGG16 file fills the encoder and fc6/fc7 and the
        other layers keep like's values.
      model: the target's config.model.name ("deconvnet", "fcn8s", "fcn8s_caffe").
      bn_mode: "inference" | "learn" for a DeconvNet file (None: bn_mode_of(path)).
      bn_epsilon: the target's BN epsilon (INFERENCE files: var = 1 - epsilon).
    Raises:
      CaffeFormatError (unreadable file), ValueError (unknown net, or not the target's kind,
      listing the layers), KeyError / ValueError naming the file and the layer of a bad blob.
    Warns:
      MissingBatchStatsWarning for a LEARN-mode DeconvNet file.
    """
    source = str(path)
    blobs = read_caffemodel(path)
    kind = detect(blobs)
    like = {"params": like["params"], "batch_stats": like.get("batch_stats", {})}
    if kind == "vgg16":  # the other layers keep like's values
        out = numpy_tree(like)
    else:  # every leaf comes from the file: only like's shapes and dtypes matter
        out = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), like)
    if kind == "vgg16" and model in ("deconvnet", "fcn8s", "fcn8s_caffe"):
        _vgg16(blobs, out, "deconvnet" if model == "deconvnet" else "fcn8s", source)
    elif kind == model == "deconvnet":
        mode = bn_mode or bn_mode_of(path)
        _deconvnet(blobs, out, mode, bn_epsilon, source)
        if mode == "learn":
            warnings.warn(
                f"{source}: LEARN-mode DeconvNet weights hold no BN statistics (mean 0, var 1 "
                "placeholders loaded); recompute them before evaluating: eval.py --recompute_bn N",
                MissingBatchStatsWarning,
                stacklevel=2,
            )
    elif kind == model == "fcn8s_caffe":
        _fcn8s_caffe(blobs, out, source)
    else:
        raise ValueError(f"{source}: a {kind} caffemodel cannot initialise model {model!r}")
    return out


def load_caffemodel(path, bn_mode: str | None = None, dtype=np.float32):
    """(model, variables) of the release's DeconvNet or the public FCN-8s caffemodel.

    A VGG16 file is no segmentation network: use ``--config.init_from=<file>`` (weights.py).
    """
    import jax.numpy as jnp

    from deconvnet_jax.models.deconvnet import DeconvNet
    from deconvnet_jax.models.fcn import FCN8s

    kind = detect(read_caffemodel(path))
    if kind == "vgg16":
        raise ValueError(f"{path}: a VGG16 caffemodel; use it as --config.init_from={path}")
    if kind == "deconvnet":
        model = DeconvNet(param_dtype=dtype, dtype=dtype)
    else:
        model = FCN8s(batch_norm=False, param_dtype=dtype, dtype=dtype)
    like = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3), dtype))
    like = {"params": like["params"], "batch_stats": like.get("batch_stats", {})}
    return model, caffemodel_to_flax(path, like, kind, bn_mode, model.bn_epsilon)
