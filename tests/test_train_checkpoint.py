"""Checkpoints and resume: exact round trip, interrupted == uninterrupted (bitwise), SIGKILL,
SIGTERM, a corrupt latest checkpoint, a NaN loss."""

import functools
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import demo
from deconvnet_jax import checkpoint, errors, optim, parallel, train_lib, weights
from deconvnet_jax.models import build_model
from tests.subproc import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(cache):
    c = demo.get_config()
    c.model.width_multiplier = 1 / 32
    c.data.cache_dir = str(cache)
    c.data.synthetic.num_train, c.data.synthetic.num_val, c.data.synthetic.image_size = 16, 4, 224
    c.data.eval_size = 224
    c.train.batch_size = 2
    c.train.eval_every = 0
    c.train.eval_max_images = 2
    c.train.log_every = 1
    c.train.eval_batch_size = 2
    return c


def _overrides(cache, **kw):
    args = {
        "model.width_multiplier": 1 / 32,
        "data.cache_dir": cache,
        "data.synthetic.num_train": 16,
        "data.synthetic.num_val": 4,
        "data.synthetic.image_size": 224,
        "data.eval_size": 224,
        "train.batch_size": 2,
        "train.eval_every": 0,
        "train.eval_max_images": 2,
        "train.log_every": 1,
        "train.eval_batch_size": 2,
        "train.checkpoint_every": 2,
    }
    args.update(kw)
    return [f"--config.{k}={v}" for k, v in args.items()]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(2)
    env["PYTHONPATH"] = str(REPO)
    return env


def _train(workdir, cache, **kw):
    cmd = [sys.executable, str(REPO / "train.py"), f"--workdir={workdir}", *_overrides(cache, **kw)]
    return subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc, timeout=300, code=0):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == code, out[-3000:]
    return out


def _truncate(step_dir):
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated files


def _params(workdir):
    return jax.device_get(weights.load_run_variables(workdir))


def _assert_bitwise(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("run_a")
    _finish(_train(workdir, cache, **{"train.num_steps": 6}))
    return workdir


def test_interrupted_run_equals_uninterrupted_bitwise(uninterrupted, cache, tmp_path):
    _finish(_train(tmp_path, cache, **{"train.num_steps": 2}))
    out = _finish(_train(tmp_path, cache, **{"train.num_steps": 6}))
    assert "resumed from" in out
    _assert_bitwise(_params(tmp_path), _params(uninterrupted))

    def losses(w):
        rows = map(json.loads, (w / "metrics.jsonl").read_text().split("\n")[:-1])
        return [r["loss"] for r in rows if "loss" in r]

    assert losses(tmp_path) == losses(uninterrupted)  # same data order, same numbers


def test_sigkill_mid_run_resumes(uninterrupted, cache, tmp_path):
    proc = _train(tmp_path, cache, **{"train.num_steps": 1000})
    deadline = time.time() + 240
    while not (tmp_path / "checkpoints" / "4").is_dir():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = _finish(_train(tmp_path, cache, **{"train.num_steps": 6}))
    assert "resumed from" in out
    _assert_bitwise(_params(tmp_path), _params(uninterrupted))


def test_sigterm_saves_then_exits(cache, tmp_path):
    proc = _train(tmp_path, cache, **{"train.num_steps": 1000, "train.checkpoint_every": 1000})
    deadline = time.time() + 240
    while not (tmp_path / "metrics.jsonl").is_file():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc, code=errors.EXIT_PREEMPTED)  # non-zero: `train.py && eval.py` stops
    assert "preempted at step" in out
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and max(steps) >= 1


def test_corrupt_latest_falls_back(uninterrupted, cache, tmp_path, caplog):
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(uninterrupted, work)
    _truncate(work / "checkpoints" / "6")
    with caplog.at_level(logging.ERROR):
        got = _params(work)
    assert "incomplete or corrupt" in caplog.text
    # ...and what came back is step 4 of the intact run (a copy without step 6 restores that).
    step4 = tmp_path / "step4"
    shutil.copytree(uninterrupted, step4)
    shutil.rmtree(step4 / "checkpoints" / "6")
    _assert_bitwise(got, _params(step4))
    with pytest.raises(AssertionError):
        _assert_bitwise(got, _params(uninterrupted))


def test_corrupt_latest_is_moved_aside_and_saved_again(uninterrupted, cache, tmp_path):
    """Issue 14.1: a truncated latest checkpoint (step 4) no longer blocks the run: it is moved
    aside (not deleted), the run resumes from step 2, saves 4 and 6 again and ends bitwise equal
    to the uninterrupted run; no asyncio tracebacks bury the message."""
    import shutil

    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "checkpoints"
    shutil.rmtree(ckpts / "6")
    (tmp_path / "final_metrics.json").unlink()
    _truncate(ckpts / "4")
    out = _finish(_train(tmp_path, cache, **{"train.num_steps": 6}))
    assert "incomplete or corrupt" in out and "Event loop is closed" not in out, out[-3000:]
    assert (ckpts / "4.corrupt-1" / "state").is_dir()  # kept for inspection
    assert {p.name for p in ckpts.iterdir() if p.name.isdigit()} >= {"4", "6"}
    _assert_bitwise(_params(tmp_path), _params(uninterrupted))


def test_all_checkpoints_corrupt_is_an_error(uninterrupted, cache, tmp_path):
    """Issue 14.2: no restorable checkpoint in the workdir -> exit EXIT_USER_ERROR with one line
    naming the steps and how to start over; nothing trains, nothing is moved."""
    import shutil

    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "checkpoints"
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    for step in steps:
        _truncate(ckpts / str(step))
    proc = _train(tmp_path, cache, **{"train.num_steps": 8})
    out = _finish(proc, code=errors.EXIT_USER_ERROR)
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out[-3000:]
    assert ", ".join(map(str, steps)) in lines[0] and "new --workdir" in lines[0]
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == steps


def _tiny_state(mesh):
    config = _config("")
    model = build_model(config.model)
    shape = (1, 224, 224, 3)
    config.optim.name, config.optim.accum_steps = "sgd", 2
    tx = optim.make_optimizer(config.optim)
    init = functools.partial(train_lib.create_train_state, model, tx, 3, shape)
    shardings = parallel.state_shardings(jax.eval_shape(init), mesh)
    return model, tx, jax.jit(init, out_shardings=shardings)(), shardings


def test_round_trip_every_leaf(tmp_path):
    mesh = parallel.make_mesh(demo.get_config().mesh)
    model, tx, state, shardings = _tiny_state(mesh)
    step = jax.jit(train_lib.make_train_step(model, tx))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.standard_normal((8, 224, 224, 3)).astype(np.float32),
        "label": rng.integers(0, 21, (8, 224, 224)).astype(np.int32),
    }
    state, _ = step(state, parallel.global_batch(batch, mesh))  # non-trivial momentum / stats
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=True)
    ckpt.save(1, state, {"grain": {"next_index": 5}})
    ckpt.wait()
    abstract = checkpoint.abstract_state(jax.eval_shape(lambda: state), shardings)
    restored, data, _, at = ckpt.restore_latest(abstract)
    ckpt.close()
    assert at == 1 and data == {"grain": {"next_index": 5}}
    flat = jax.tree.leaves_with_path(jax.device_get(state))
    back = jax.tree.leaves(jax.device_get(restored))
    assert len(flat) == len(back) > 100
    for (path, a), b in zip(flat, back):
        assert np.asarray(a).dtype == np.asarray(b).dtype, path
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_nan_loss_keeps_state_and_reports():
    mesh = parallel.make_mesh(demo.get_config().mesh)
    model, tx, state, _ = _tiny_state(mesh)
    before = jax.device_get(state)
    step = jax.jit(train_lib.make_train_step(model, tx))
    batch = {
        "image": np.full((8, 224, 224, 3), np.nan, np.float32),
        "label": np.zeros((8, 224, 224), np.int32),
    }
    state, metrics = step(state, parallel.global_batch(batch, mesh))
    assert not bool(metrics["finite"])
    _assert_bitwise(jax.device_get(state), before)
