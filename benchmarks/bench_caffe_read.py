"""Reading a full-size caffemodel: `interop.caffe.read_caffemodel` against reading its bytes.

Writes the full-width DeconvNet (251,805,653 parameters, the release's layer list as in
tests/caffe_nets.py, random blobs, V1 `layers` as the release's files) to a temporary file of
~1 GB, then times, each in a fresh subprocess with the file in the page cache:

- `raw`: `readinto` one preallocated buffer, unbuffered (the floor: the bytes have to be read
  once; faster than `f.read()`, which took 0.93 s against this 0.57 s here);
- `read_caffemodel`: the parse into shaped NumPy arrays.

and records each subprocess's peak extra resident memory (VmHWM after the call, reset just before
it, minus VmRSS before it), as a multiple of the file size. Targets (issue 13): time <= 2x raw,
peak extra <= 1.5x the file.

  python benchmarks/bench_caffe_read.py --out benchmarks/results/caffe_read_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import environment, write_json  # noqa: E402

# One timed read in a fresh interpreter: prints {"s": seconds, "extra_rss_bytes": ...}.
_CHILD = r"""
import json, resource, sys, time
path, how = sys.argv[1], sys.argv[2]
from deconvnet_jax.interop import caffe
import numpy as np
def hwm():  # peak resident set size in bytes (VmHWM; ru_maxrss where /proc is missing)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def rss():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return hwm()
try:  # reset the peak to the current RSS, so that import-time peaks do not hide the read's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = rss()
t0 = time.perf_counter()
if how == "raw":
    import os
    data = bytearray(os.path.getsize(path))
    with open(path, "rb", buffering=0) as f:
        n = f.readinto(data)
else:
    blobs = caffe.read_caffemodel(path)
    n = sum(b.size for bs in blobs.values() for b in bs)
s = time.perf_counter() - t0
after = hwm()
print(json.dumps({"s": s, "extra_rss_bytes": after - before, "count": n}))
"""


def _time_child(path: str, how: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, path, how],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--div", type=int, default=1, help="width divisor (1 = full, ~1 GB)")
    parser.add_argument("--dir", default="", help="where to write the file (default: a temp dir)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from deconvnet_jax.interop import caffe
    from tests.caffe_nets import deconvnet_layers

    with tempfile.TemporaryDirectory(dir=args.dir or None) as tmp:
        path = os.path.join(tmp, "DeconvNet_trainval_inference.caffemodel")
        layers = deconvnet_layers(seed=0, div=args.div)
        params = sum(b.size for _, _, blobs in layers for b in blobs)
        caffe.write_caffemodel(path, layers, version=1)
        del layers
        size = os.path.getsize(path)
        print(f"wrote {size / 2**20:.0f} MiB ({params:,} parameters)")
        _time_child(path, "raw")  # page cache warm
        runs = {how: [] for how in ("raw", "read_caffemodel")}
        for _ in range(args.repeats):
            for how in runs:
                runs[how].append(_time_child(path, how))
    rows = {}
    for how, rs in runs.items():
        best = min(rs, key=lambda r: r["s"])
        rows[how] = {
            "s": best["s"],
            "all_s": [r["s"] for r in rs],
            "extra_rss_bytes": max(r["extra_rss_bytes"] for r in rs),
            "extra_rss_over_file": max(r["extra_rss_bytes"] for r in rs) / size,
        }
    assert runs["read_caffemodel"][0]["count"] == params, "parse lost values"
    ratio = rows["read_caffemodel"]["s"] / rows["raw"]["s"]
    for how, r in rows.items():
        print(f"{how:<16} {r['s']:.3f} s   peak extra RSS {r['extra_rss_over_file']:.2f}x file")
    print(f"read_caffemodel / raw read: {ratio:.2f}x (target <= 2)")
    result = {
        "benchmark": "caffe_read",
        "file_bytes": size,
        "parameters": params,
        "rows": rows,
        "read_over_raw": ratio,
        "targets": {"read_over_raw": 2.0, "extra_rss_over_file": 1.5},
        "timing": "min over repeats, each a fresh process, file in the page cache",
        "env": environment(),
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
