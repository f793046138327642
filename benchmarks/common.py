"""Shared benchmark helpers: timing, environment record, the analytic FLOP count of DeconvNet."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deconvnet_jax.models.deconvnet import DECODER, FC_DECONV  # noqa: E402
from deconvnet_jax.models.layers import ENCODER, FC, scaled  # noqa: E402


def deconvnet_forward_flops(
    height: int = 224, width: int = 224, width_multiplier: float = 1.0, num_classes: int = 21
) -> float:
    """Multiply-adds x 2 of every conv/deconv/classifier for one image (BN, ReLU, pooling excluded).

    A stride-1 convolution costs out_h * out_w * k * k * cin * cout MACs; a stride-1 transposed
    convolution in_h * in_w * k * k * cin * cout. At 224x224, full width: about 65.5 GFLOP.
    """
    macs = 0
    cin, h, w = 3, height, width
    for _, layers, feats in ENCODER:
        for f in feats:
            cout = scaled(f, width_multiplier)
            macs += h * w * 9 * cin * cout
            cin = cout
        h, w = h // 2, w // 2
    pool_hw = (h, w)
    f6, f7, fd = (scaled(c, width_multiplier) for _, _, c in FC + (FC_DECONV,))
    h6, w6 = h - 6, w - 6
    macs += h6 * w6 * 49 * cin * f6 + h6 * w6 * f6 * f7 + h6 * w6 * 49 * f7 * fd
    cin, (h, w) = fd, pool_hw
    for _, layers, feats in DECODER:
        h, w = h * 2, w * 2
        for f in feats:
            cout = scaled(f, width_multiplier)
            macs += h * w * 9 * cin * cout
            cin = cout
    macs += height * width * cin * num_classes
    return 2.0 * macs


def measured_matmul_tflops(dtype: str = "float32", n: int = 0, repeats: int = 5) -> float:
    """The device's measured dense matrix-product rate in TFLOP/s (JAX, n x n x n, median).

    The MFU denominator: n = 4096 on CPU, 8192 on an accelerator; bf16 or f32 as the benchmark.
    """
    import jax
    import jax.numpy as jnp

    n = n or (4096 if jax.default_backend() == "cpu" else 8192)
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.dtype(dtype))
    f = jax.jit(lambda x, y: x @ y)
    med, _ = median_time(lambda: f(a, a).block_until_ready(), repeats)
    return 2.0 * n**3 / med / 1e12


def median_time(
    fn: Callable[[], object], repeats: int, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median wall time of fn() (fn must synchronise the device itself)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def add_network_args(parser, batch: int) -> None:
    """The arguments bench_train.py and bench_infer.py share (same network, batch, precision)."""
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch_compile", action="store_true", help="also time torch.compile")
    parser.add_argument(
        "--conv_impls",
        default="auto,direct",
        help="JAX 3x3 conv implementations to time, the first is the headline 'jax' row",
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=0.0,
        help="MFU denominator (default: this device's measured matmul rate)",
    )
    parser.add_argument("--out", default="")


def network_result(args, benchmark: str, peak_tflops: float, **fields) -> dict:
    """The JSON record of a network benchmark: its setting, `fields`, then the environment."""
    return dict(
        benchmark=benchmark,
        batch=args.batch,
        size=args.size,
        width_multiplier=args.width,
        dtype=args.dtype,
        mfu_denominator_tflops=peak_tflops,
        mfu_denominator=("--peak_tflops" if args.peak_tflops else "measured dense matmul rate"),
        **fields,
        env=environment(),
    )


def jax_row_names(conv_impls: str) -> list[tuple[str, str]]:
    """'auto,direct' -> [('jax', 'auto'), ('jax_direct', 'direct')]: the first is the headline."""
    impls = [i.strip() for i in conv_impls.split(",") if i.strip()]
    if not impls:
        raise ValueError("--conv_impls needs at least one of direct, winograd, auto")
    return [("jax" if n == 0 else f"jax_{impl}", impl) for n, impl in enumerate(impls)]


def add_rates(rows: dict, batch: int, flops: float, peak_tflops: float) -> dict:
    """Adds images/s, TFLOP/s and MFU to every row; returns the JAX/PyTorch time ratios."""
    for r in rows.values():
        r["images_per_s"] = batch / r["step_s"]
        r["achieved_tflops"] = flops / r["step_s"] / 1e12
        r["mfu"] = r["achieved_tflops"] / peak_tflops
    jax_rows = [k for k in rows if k.startswith("jax")]
    torch_rows = [k for k in rows if k.startswith("torch")]
    return {
        f"{j}_time_over_{t}": rows[j]["step_s"] / rows[t]["step_s"]
        for j in jax_rows
        for t in torch_rows
    }


def print_table(title: str, rows: dict, ratios: dict) -> None:
    print(title)
    print(f"{'impl':<16}{'s/step':>10}{'img/s':>10}{'TFLOP/s':>10}{'MFU':>8}")
    for k, r in rows.items():
        print(
            f"{k:<16}{r['step_s']:>10.3f}{r['images_per_s']:>10.2f}{r['achieved_tflops']:>10.3f}"
            f"{100 * r['mfu']:>7.1f}%"
        )
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")


ISA_VARS = ("XLA_FLAGS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
# What an AVX2 machine (e.g. AMD Zen 3, Intel before Skylake-SP) runs: set for JAX and PyTorch.
AVX2_ENV = {
    "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}
# glibc: keep large blocks instead of returning them to the OS (PyTorch on CPU allocates and
# frees its activations every step; with these it stops paying for fresh pages each time).
MALLOC_TUNED_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def isa_limit(environ=None) -> str:
    """'native', or the ISA limits in the environment, e.g. 'XLA=AVX2 oneDNN=AVX2 ATen=avx2'."""
    environ = os.environ if environ is None else environ
    parts = []
    for flag in environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_cpu_max_isa="):
            parts.append("XLA=" + flag.split("=", 1)[1])
    if environ.get("ONEDNN_MAX_CPU_ISA"):
        parts.append("oneDNN=" + environ["ONEDNN_MAX_CPU_ISA"])
    if environ.get("ATEN_CPU_CAPABILITY"):
        parts.append("ATen=" + environ["ATEN_CPU_CAPABILITY"])
    return " ".join(parts) or "native"


def environment() -> dict:
    """Device, versions and command of this run."""
    import jax

    env = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_device": str(jax.devices()[0].device_kind),
        "jax_device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_model": cpu_model(),
        "cpu_has_avx512f": "avx512f" in cpu_flags(),
        "cpu_has_avx2": "avx2" in cpu_flags(),
        # The ISA limits in force (XLA_FLAGS --xla_cpu_max_isa, oneDNN, ATen): "native" if none.
        "isa_limit": isa_limit(),
        # Other load on the machine when this run started (1/5/15-minute averages): on a shared
        # machine the ratios are only as good as this is low.
        "load_average": [round(x, 2) for x in os.getloadavg()],
        # Settings that change the timings (the glibc allocator's MALLOC_* tunables, XLA flags).
        "env_vars": {
            k: v
            for k, v in os.environ.items()
            if k.startswith("MALLOC_") or k in (*ISA_VARS, "OMP_NUM_THREADS", "LD_PRELOAD")
        },
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            env["torch_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        env["git_dirty"] = bool(
            subprocess.run(
                # results/ is excluded: a chain of benchmarks writes it as it goes.
                [
                    "git",
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                    "--",
                    ".",
                    ":!benchmarks/results",
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        pass
    return env


def write_json(path: str, result: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {path}")
