"""Sweeps: override parsing, and a two-run sweep end to end (real training) with its table."""

import csv
import os
import pathlib
import subprocess
import sys

import pytest

from configs import demo
from deconvnet_jax import sweep
from tests.subproc import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_apply_overrides_and_names(tmp_path):
    base = demo.get_config()
    cfg = sweep.apply_overrides(base, {"optim.lr": 0.5, "data.mode": "stage1"})
    assert cfg.optim.lr == 0.5 and cfg.data.mode == "stage1"
    assert base.optim.lr == demo.get_config().optim.lr  # the base is untouched
    with pytest.raises(KeyError, match="optim.lrr"):
        sweep.apply_overrides(base, {"optim.lrr": 1.0})
    assert (
        sweep.run_name({"optim.lr": 0.01, "data.mode": "whole"}) == "optim.lr=0.01,data.mode=whole"
    )
    assert sweep.run_name({"optim.decay_steps": (200, 300)}) == "optim.decay_steps=200-300"
    bad = tmp_path / "bad.py"
    bad.write_text("def get_sweep():\n    yield 3\n")
    with pytest.raises(ValueError, match="not a dict"):
        sweep.load_sweep(bad)
    assert sweep.load_sweep(REPO / "configs/sweeps/lr.py") == [
        {"optim.lr": 0.005},
        {"optim.lr": 0.01},
        {"optim.lr": 0.02},
    ]


@pytest.mark.slow
def test_two_run_sweep_end_to_end(tmp_path):
    sweep_file = tmp_path / "two.py"
    sweep_file.write_text(
        "def get_sweep():\n    yield {'optim.lr': 0.01}\n"
        "    yield {'optim.lr': 0.02, 'train.recompute_bn_batches': 2}\n"
    )
    cache = tmp_path / "cache"
    args = {
        "model.width_multiplier": 1 / 32,
        "data.cache_dir": cache,
        "data.synthetic.num_train": 8,
        "data.synthetic.num_val": 2,
        "data.synthetic.image_size": 224,
        "data.eval_size": 224,
        "train.batch_size": 2,
        "train.num_steps": 2,
        "train.eval_every": 0,
        "train.log_every": 1,
        "train.eval_batch_size": 2,
        "train.checkpoint_every": 2,
    }
    cmd = [
        sys.executable,
        "-m",
        "deconvnet_jax.sweep",
        "--config",
        str(REPO / "configs/demo.py"),
        "--sweep",
        str(sweep_file),
        f"--workdir={tmp_path / 'sw'}",
        *[f"--config.{k}={v}" for k, v in args.items()],
    ]
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=str(REPO))
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "sw" / "results.csv")))
    assert [r["name"] for r in rows] == [
        "optim.lr=0.01",
        "optim.lr=0.02,train.recompute_bn_batches=2",
    ]
    for r in rows:
        assert r["status"] == "done" and 0.0 <= float(r["val_miou"]) <= 1.0 and r["steps"] == "2"
        assert (tmp_path / "sw" / r["name"] / "final_metrics.json").is_file()
    table = (tmp_path / "sw" / "results.md").read_text()
    assert "optim.lr=0.02,train.recompute_bn_batches=2" in table and "val mIoU" in table
    # Run again: both runs are finished, so nothing trains and the table is rewritten the same.
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier, skipped") == 2
    assert list(csv.DictReader(open(tmp_path / "sw" / "results.csv"))) == rows
