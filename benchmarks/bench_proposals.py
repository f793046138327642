"""Proposal inference throughput: the jitted JAX path vs the PyTorch reference, same crops.

One image (VOC-sized, 500x375 by default) with K proposals (50, the release) at full width. Both
sides use the same random weights (through deconvnet_jax.interop) and the same boxes:
  JAX      proposals.segment.make_segment_fn: crop-resize and paste as matrix products, the
           network on the K crops in chunks of --chunk, max aggregation, one jitted call.
  PyTorch  the straightforward reference: per box, slice the window (zero padding outside the
           image) and F.interpolate(bilinear, align_corners=False) to 224; DeconvNetTorch on the
           crops in chunks of --chunk (inference_mode); per box, F.interpolate the scores back to
           the window and max them into a zero canvas.
The two score maps are compared (label agreement, median and max difference). "overhead" rows
time the same pipelines with the network
replaced by a cheap stand-in (crop + paste + aggregation only). Times are medians after warm-up.

  python benchmarks/bench_proposals.py --repeats 2 --out benchmarks/results/proposals_cpu.json
"""

from __future__ import annotations

import argparse
import math
import os
import time

import common  # noqa: F401  (puts the repo root on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

from deconvnet_jax.models.deconvnet import DeconvNet
from deconvnet_jax.proposals import segment

CROP = segment.CROP_SIZE


def random_variables(model, seed: int = 0):
    """He-normal random weights and random BN statistics built in NumPy (no slow flax init)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, CROP, CROP, 3)))

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(s.shape[:-1]))
            return (rng.standard_normal(s.shape, np.float32) * np.sqrt(2 / fan_in)).astype(
                np.float32
            )
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
        return rng.normal(0, 0.1, s.shape).astype(np.float32)

    return jax.tree.map_with_path(leaf, shapes)


def make_boxes(k: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """K boxes with sides >= 112 (what selection keeps), some leaving the image."""
    rng = np.random.default_rng(seed)
    side = rng.uniform(112, min(h, w), (k, 2))
    x0 = rng.uniform(-20, w - side[:, 0] + 20)
    y0 = rng.uniform(-20, h - side[:, 1] + 20)
    return np.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], 1).astype(np.float32)


def windows(boxes):
    return [
        (
            math.floor(b[0]),
            math.floor(b[1]),
            max(math.ceil(b[2]), math.floor(b[0]) + 1),
            max(math.ceil(b[3]), math.floor(b[1]) + 1),
        )
        for b in boxes
    ]


def torch_segment(net, image_chw, boxes, chunk: int, num_classes: int):
    """The PyTorch reference pipeline (see the module docstring). Returns scores [C, H, W]."""
    import torch
    import torch.nn.functional as F

    _, h, w = image_chw.shape
    wins = windows(boxes)
    crops = []
    for x0, y0, x1, y1 in wins:
        win = image_chw.new_zeros((3, y1 - y0, x1 - x0))
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if ix1 > ix0 and iy1 > iy0:
            win[:, iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = image_chw[:, iy0:iy1, ix0:ix1]
        crops.append(
            F.interpolate(win[None], size=(CROP, CROP), mode="bilinear", align_corners=False)
        )
    crops = torch.cat(crops)
    scores = torch.cat([net(crops[i : i + chunk]) for i in range(0, len(crops), chunk)])
    canvas = image_chw.new_zeros((num_classes, h, w))
    for s, (x0, y0, x1, y1) in zip(scores, wins):
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        back = F.interpolate(
            s[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False
        )[0]
        region = canvas[:, iy0:iy1, ix0:ix1]
        torch.maximum(region, back[:, iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0], out=region)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=50, help="proposals per image")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width_px", type=int, default=500)
    parser.add_argument("--canvas", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--impls", default="matmul,gather", help="segment resize_impl(s) to time")
    parser.add_argument("--width", type=float, default=1.0, help="network width multiplier")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip_torch", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    import torch

    from deconvnet_jax.torch.reference import DeconvNetTorch
    from deconvnet_jax.torch.weights import to_torch_state_dict

    load_start = os.getloadavg()  # the machine may be shared: recorded with the result
    h, w, c = args.height, args.width_px, 21
    model = DeconvNet(num_classes=c, width_multiplier=args.width)
    t0 = time.perf_counter()
    variables = jax.device_put(random_variables(model))
    init_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    image = (rng.standard_normal((h, w, 3)) * 50).astype(np.float32)  # a normalised image
    boxes = make_boxes(args.k, h, w)
    canvas = segment.pad_image(image, args.canvas)[None]
    hw = np.array([[h, w]], np.int32)
    valid = np.ones((1, args.k), bool)
    rows = {}

    def run_jax(apply_fn, name, impl):
        fn = segment.make_segment_fn(apply_fn, args.chunk, "max", impl)
        t = time.perf_counter()
        out = fn(variables, canvas, hw, boxes[None], valid)[0].block_until_ready()
        compile_s = time.perf_counter() - t
        med, times = common.median_time(
            lambda: fn(variables, canvas, hw, boxes[None], valid)[0].block_until_ready(),
            args.repeats,
            warmup=0,  # the first call above compiled and warmed up
        )
        rows[name] = dict(image_s=med, times_s=times, first_call_s=compile_s)
        print(f"{name}: {med:.2f} s/image (first call {compile_s:.1f} s)", flush=True)
        return np.asarray(out)[0, :h, :w]

    impls = args.impls.split(",")
    outs = {}
    for impl in impls:
        outs[impl] = run_jax(lambda v, x: model.apply(v, x, train=False), f"jax_{impl}", impl)
        run_jax(lambda v, x: jnp.tile(x[..., :1], (1, 1, 1, c)), f"jax_{impl}_overhead", impl)

    result = dict(
        benchmark="proposal inference, one image, K proposals (crop, network, paste, max)",
        k=args.k,
        image_hw=[h, w],
        canvas=args.canvas,
        chunk=args.chunk,
        width_multiplier=args.width,
        gflop_per_image=common.deconvnet_forward_flops(CROP, CROP, args.width) * args.k / 1e9,
        random_weights_s=init_s,
        results=rows,
        env=common.environment(),
    )
    if not args.skip_torch:
        net = DeconvNetTorch(num_classes=c, width_multiplier=args.width).eval()
        net.load_flat(to_torch_state_dict(jax.device_get(variables)))
        image_t = torch.as_tensor(image).permute(2, 0, 1).contiguous()

        def run_torch(fn, name):
            def call():
                with torch.inference_mode():
                    return torch_segment(fn, image_t, boxes, args.chunk, c)

            out = call()  # warm-up
            med, times = common.median_time(call, args.repeats, warmup=0)
            rows[name] = dict(image_s=med, times_s=times)
            print(f"{name}: {med:.2f} s/image", flush=True)
            return out

        out_t = run_torch(net, "torch").permute(1, 2, 0).numpy()
        run_torch(lambda x: x[:, :1].expand(-1, c, -1, -1), "torch_overhead")
        # Max-pooling switches flip under float-rounding differences of the crops (torch computes
        # its sampling coordinates in float32), which moves unpooled values: compare the labels
        # and the bulk of the scores rather than the single largest difference.
        result["max_abs_scores"] = float(np.abs(out_t).max())
        for impl, out_jax in outs.items():
            diff = np.abs(out_jax - out_t)
            result[f"{impl}_vs_torch"] = dict(
                max_abs_diff=float(diff.max()),
                median_abs_diff=float(np.median(diff)),
                label_agreement=float(np.mean(out_jax.argmax(-1) == out_t.argmax(-1))),
                jax_time_over_torch=rows[f"jax_{impl}"]["image_s"] / rows["torch"]["image_s"],
            )
        result["target_jax_time_over_torch"] = 0.6
    result["load_average_start_end"] = [list(load_start), list(os.getloadavg())]
    for r in rows.values():
        r["images_per_s"] = 1 / r["image_s"]
        r["proposals_per_s"] = args.k / r["image_s"]
    print({k: (round(v["image_s"], 3), round(v["proposals_per_s"], 2)) for k, v in rows.items()})
    for impl in impls:
        if f"{impl}_vs_torch" in result:
            r = result[f"{impl}_vs_torch"]
            print(
                f"JAX ({impl}) / PyTorch time: {r['jax_time_over_torch']:.3f} (target <= 0.6); "
                f"labels agree on {100 * r['label_agreement']:.2f}% of pixels; median |diff| "
                f"{r['median_abs_diff']:.1e}, max {r['max_abs_diff']:.1e} of "
                f"{result['max_abs_scores']:.1e}"
            )
    common.write_json(args.out, result)


if __name__ == "__main__":
    main()
