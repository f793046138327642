"""Caffe nets for the import tests (not a test module): layer lists typed in from the release's
prototxts (DeconvNet_inference_deploy.prototxt, fcn-8s-pascal-deploy.prototxt), random blobs in
Caffe layouts, and a DeconvNet forward written directly over those blobs with torch functional ops.
"""

import numpy as np
import torch

# DeconvNet_inference_deploy.prototxt: (layer, kind, kernel, in, out, pad, BN layer or None).
DECONVNET = [
    ("conv1_1", "conv", 3, 3, 64, 1, "bn1_1"), ("conv1_2", "conv", 3, 64, 64, 1, "bn1_2"),
    ("pool1",),
    ("conv2_1", "conv", 3, 64, 128, 1, "bn2_1"), ("conv2_2", "conv", 3, 128, 128, 1, "bn2_2"),
    ("pool2",),
    ("conv3_1", "conv", 3, 128, 256, 1, "bn3_1"), ("conv3_2", "conv", 3, 256, 256, 1, "bn3_2"),
    ("conv3_3", "conv", 3, 256, 256, 1, "bn3_3"),
    ("pool3",),
    ("conv4_1", "conv", 3, 256, 512, 1, "bn4_1"), ("conv4_2", "conv", 3, 512, 512, 1, "bn4_2"),
    ("conv4_3", "conv", 3, 512, 512, 1, "bn4_3"),
    ("pool4",),
    ("conv5_1", "conv", 3, 512, 512, 1, "bn5_1"), ("conv5_2", "conv", 3, 512, 512, 1, "bn5_2"),
    ("conv5_3", "conv", 3, 512, 512, 1, "bn5_3"),
    ("pool5",),
    ("fc6", "conv", 7, 512, 4096, 0, "bnfc6"), ("fc7", "conv", 1, 4096, 4096, 0, "bnfc7"),
    ("fc6-deconv", "deconv", 7, 4096, 512, 0, "fc6-deconv-bn"),
    ("unpool5",),
    ("deconv5_1", "deconv", 3, 512, 512, 1, "debn5_1"),
    ("deconv5_2", "deconv", 3, 512, 512, 1, "debn5_2"),
    ("deconv5_3", "deconv", 3, 512, 512, 1, "debn5_3"),
    ("unpool4",),
    ("deconv4_1", "deconv", 3, 512, 512, 1, "debn4_1"),
    ("deconv4_2", "deconv", 3, 512, 512, 1, "debn4_2"),
    ("deconv4_3", "deconv", 3, 512, 256, 1, "debn4_3"),
    ("unpool3",),
    ("deconv3_1", "deconv", 3, 256, 256, 1, "debn3_1"),
    ("deconv3_2", "deconv", 3, 256, 256, 1, "debn3_2"),
    ("deconv3_3", "deconv", 3, 256, 128, 1, "debn3_3"),
    ("unpool2",),
    ("deconv2_1", "deconv", 3, 128, 128, 1, "debn2_1"),
    ("deconv2_2", "deconv", 3, 128, 64, 1, "debn2_2"),
    ("unpool1",),
    ("deconv1_1", "deconv", 3, 64, 64, 1, "debn1_1"),
    ("deconv1_2", "deconv", 3, 64, 64, 1, "debn1_2"),
    ("seg-score-voc", "conv", 1, 64, 21, 0, None),
]  # fmt: skip

# fcn-8s-pascal-deploy.prototxt: (layer, kind, kernel, in, out, bias_term).
FCN8S = [
    ("conv1_1", "conv", 3, 3, 64, 1), ("conv1_2", "conv", 3, 64, 64, 1),
    ("conv2_1", "conv", 3, 64, 128, 1), ("conv2_2", "conv", 3, 128, 128, 1),
    ("conv3_1", "conv", 3, 128, 256, 1), ("conv3_2", "conv", 3, 256, 256, 1),
    ("conv3_3", "conv", 3, 256, 256, 1), ("conv4_1", "conv", 3, 256, 512, 1),
    ("conv4_2", "conv", 3, 512, 512, 1), ("conv4_3", "conv", 3, 512, 512, 1),
    ("conv5_1", "conv", 3, 512, 512, 1), ("conv5_2", "conv", 3, 512, 512, 1),
    ("conv5_3", "conv", 3, 512, 512, 1),
    ("fc6", "conv", 7, 512, 4096, 1), ("fc7", "conv", 1, 4096, 4096, 1),
    ("score-fr", "conv", 1, 4096, 21, 1), ("score2", "deconv", 4, 21, 21, 1),
    ("score-pool4", "conv", 1, 512, 21, 1), ("score4", "deconv", 4, 21, 21, 0),
    ("score-pool3", "conv", 1, 256, 21, 1), ("upsample", "deconv", 16, 21, 21, 0),
]  # fmt: skip

TYPES = {"conv": "Convolution", "deconv": "Deconvolution"}


def _div(c, div):
    """A width-scaled channel count (the image's 3 and the 21 classes stay)."""
    return c if c in (3, 21) else max(1, c // div)


def _w(rng, kind, k, cin, cout, dtype):
    fan_in = cin * k * k
    shape = (cout, cin, k, k) if kind == "conv" else (cin, cout, k, k)
    return (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(dtype)


def deconvnet_layers(seed=0, dtype=np.float32, div=1):
    """(name, V2 type, blobs) of the DeconvNet at width 1 / div, random: the writer's input.

    BN blobs: scale ~ U(0.5, 1.5), shift ~ N(0, 0.1), each [1, C, 1, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for name, kind, k, cin, cout, _, bn in (row for row in DECONVNET if len(row) > 1):
        cin, cout = _div(cin, div), _div(cout, div)
        bias = (rng.standard_normal(cout) * 0.1).astype(dtype)
        out.append((name, TYPES[kind], [_w(rng, kind, k, cin, cout, dtype), bias]))
        out.append((name + "-relu", "ReLU", []))
        if bn:
            scale = rng.uniform(0.5, 1.5, (1, cout, 1, 1)).astype(dtype)
            shift = (rng.standard_normal((1, cout, 1, 1)) * 0.1).astype(dtype)
            out.append((bn, "BN", [scale, shift]))
    return out


def fcn8s_layers(seed=0, dtype=np.float32, div=1):
    """(name, V2 type, blobs) of the public FCN-8s at width 1 / div (encoder and fc6/fc7)."""
    rng = np.random.default_rng(seed)
    out = []
    for name, kind, k, cin, cout, bias in FCN8S:
        cin, cout = _div(cin, div), _div(cout, div)
        blobs = [_w(rng, kind, k, cin, cout, dtype)]
        if bias:
            blobs.append((rng.standard_normal(cout) * 0.1).astype(dtype))
        out.append((name, TYPES[kind], blobs))
    out += [("drop6", "Dropout", []), ("crop", "Crop", []), ("fuse", "Eltwise", [])]
    return out


def deconvnet_forward(blobs, x: torch.Tensor) -> torch.Tensor:
    """DeconvNet_inference_deploy.prototxt over Caffe blobs (INFERENCE BN: scale * x + shift):
    [B, 3, H, W] -> [B, 21, H, W], in the blobs' dtype."""
    F = torch.nn.functional
    t = {k: [torch.from_numpy(np.asarray(b)) for b in v] for k, v in blobs.items()}
    switches = []
    for row in DECONVNET:
        name = row[0]
        if name.startswith("pool"):
            switches.append(x.shape[-2:])
            x, idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
            switches[-1] = (switches[-1], idx)
            continue
        if name.startswith("unpool"):
            size, idx = switches.pop()
            x = F.max_unpool2d(x, idx, 2, 2, output_size=size)
            continue
        _, kind, _, _, _, pad, bn = row
        op = F.conv2d if kind == "conv" else F.conv_transpose2d
        x = op(x, t[name][0], t[name][1], padding=pad)
        if bn is not None:
            x = torch.relu(t[bn][0] * x + t[bn][1])
    return x
