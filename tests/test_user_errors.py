"""Issue 14.6: bad configs and inputs are one line on stderr and a non-zero exit, found before any
model is built; tracebacks only behind --debug."""

import os
import pathlib
import subprocess
import sys

import pytest

from configs import demo
from deconvnet_jax import config_check, errors, sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, script="train.py"):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_config_is_one_line_per_field_before_init(tmp_path):
    proc = _run(
        f"--workdir={tmp_path / 'w'}",
        "--config.optim.lr=-0.1",
        "--config.train.batch_size=0",
        "--config.optim.schedule=linear",
    )
    assert proc.returncode == errors.EXIT_USER_ERROR, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 3, proc.stderr[-3000:]
    assert [line.split("=")[0] for line in lines] == [
        "error: config.optim.schedule",
        "error: config.optim.lr",
        "error: config.train.batch_size",
    ]
    assert not (tmp_path / "w").exists()  # nothing was built


def test_unknown_key_is_one_line(tmp_path):
    proc = _run(f"--workdir={tmp_path}", "--config.train.nonexistent=1")
    assert proc.returncode == errors.EXIT_USER_ERROR
    assert len(proc.stderr.strip().splitlines()) == 1 and "nonexistent" in proc.stderr


def test_config_problems_named(tmp_path):
    c = demo.get_config()
    assert config_check.train_config_problems(c) == []
    c.optim.momentum, c.data.resize, c.model.width_multiplier = 1.5, 100, float("nan")
    got = config_check.train_config_problems(c)
    assert len(got) == 3 and all(line.startswith("config.") for line in got), got
    with pytest.raises(config_check.ConfigError, match="sweep run .*optim.lr"):
        sweep.check_overrides(demo.get_config(), [{"optim.lr": 0.1}, {"optim.lr": -1.0}])
    with pytest.raises(config_check.ConfigError, match="optim.nonexistent"):
        sweep.check_overrides(demo.get_config(), [{"optim.nonexistent": 1}])
    c = demo.get_config()  # a warm-up is part of the cosine: shorter than it, and only there
    c.optim.warmup_steps = max(c.optim.decay_steps)
    assert config_check.train_config_problems(c) == [
        f"config.optim.warmup_steps={c.optim.warmup_steps} must be < max(config.optim."
        f"decay_steps)={max(c.optim.decay_steps)} (the cosine's length, warm-up included)"
    ]
    c.optim.schedule = "step"
    assert config_check.train_config_problems(c) == [
        f"config.optim.warmup_steps={c.optim.warmup_steps} needs config.optim.schedule='cosine'"
    ]


def test_random_bytes_pth_names_the_file_safely(tmp_path):
    from deconvnet_jax.torch import weights as torch_weights

    bad = tmp_path / "random.pth"
    bad.write_bytes(os.urandom(4000))
    with pytest.raises(errors.UserError) as e:
        torch_weights.load_torch_checkpoint(bad)
    assert str(bad) in str(e.value) and "weights_only" not in str(e.value)
    assert len(str(e.value).splitlines()) == 1
