"""Real multi-process runs: two processes joined by jax.distributed on 127.0.0.1 (gloo CPU
collectives, 4 devices each) give the same losses and parameters as one process with 8 devices; and
train.py itself runs with --coordinator/--num_processes/--process_id."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_train_parallel import _run

from deconvnet_jax import errors
from tests.subproc import xla_flags

HERE = pathlib.Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_worker_pair(script, args_of, env, timeout):
    """Runs tests/<script> as processes 0 and 1 (arguments args_of(i)) to the end; returns the
    processes and their combined stdout+stderr. Both are killed if either outlives `timeout`."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / script), *args_of(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        return procs, [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_two_processes_equal_one_process_with_8_devices(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["XLA_FLAGS"] = xla_flags(4)  # the worker keeps the flags and sets 4 devices itself
    procs, logs = _run_worker_pair(
        "multihost_worker.py",
        lambda i: [str(i), "2", str(port), str(tmp_path / f"p{i}.npz")],
        env,
        timeout=600,
    )
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    with jax.enable_x64(True):  # the same program in one process (a compilation-cache hit)
        ref_losses, ref_state = _run(8, 1, dtype="float64")
    ref = {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree.leaves_with_path(
            {"params": ref_state.params, "batch_stats": ref_state.batch_stats}
        )
    }
    for i in range(2):
        got = np.load(tmp_path / f"p{i}.npz")
        assert int(got["local_batch"]) == 4  # each process fed only its half of the batch of 8
        # Float64, so only the summation order differs (gloo sums the processes' partial
        # gradients and BN statistics in another order than the in-process all-reduce):
        # per-process BN statistics over 4 images instead of 8 would change the losses and
        # parameters by orders of magnitude more than these tolerances.
        np.testing.assert_allclose(got["losses"], ref_losses, rtol=1e-12)
        for key, value in ref.items():
            assert got[key].dtype == np.float64, key
            np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


_TRAIN_PY = {  # a 1/32-width DeconvNet on 16 generated 224x224 images, batches of 8
    "model.width_multiplier": 1 / 32,
    "data.synthetic.num_train": 16,
    "data.synthetic.num_val": 4,
    "data.synthetic.image_size": 224,
    "data.eval_size": 224,
    "train.batch_size": 8,
    "train.log_every": 1,
    "train.eval_batch_size": 8,
}


def _start_train_py_pair(run, env_extra=(), **overrides):
    """train.py as processes 0 and 1 of one jax.distributed job (4 CPU devices each)."""
    repo = HERE.parent
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(
        XLA_FLAGS=xla_flags(4),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(repo),
        **dict(env_extra),
    )
    cmd = [
        sys.executable,
        str(repo / "train.py"),
        f"--workdir={run}",
        f"--coordinator=127.0.0.1:{_free_port()}",
        "--num_processes=2",
        *[f"--config.{k}={v}" for k, v in {**_TRAIN_PY, **overrides}.items()],
    ]
    return [
        subprocess.Popen(
            cmd + [f"--process_id={i}"],
            cwd=repo,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]


def _preempted_pair(run, env_extra):
    """train.py as a two-process job (eval and checkpoint every 2 steps, no end), SIGTERM to
    process 1 only once process 0 logged step 4. Returns (outputs, logged loss steps)."""
    import signal
    import time

    def logged_steps():
        if not (run / "metrics.jsonl").is_file():
            return [0]
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["step"] for line in lines if '"loss"' in line]

    procs = _start_train_py_pair(
        run,
        env_extra,
        **{"train.num_steps": 100000, "train.eval_every": 2, "train.checkpoint_every": 2},
    )
    try:
        deadline = time.time() + 400
        while max(logged_steps()) < 4:
            if any(p.poll() is not None for p in procs) or time.time() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                logs = [p.communicate()[0][-8000:] for p in procs]
                pytest.fail(
                    f"step 4 not reached; returncodes {[p.returncode for p in procs]}:\n"
                    + "\n---\n".join(logs)
                )
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == errors.EXIT_PREEMPTED, out[-3000:]
    return outs, logged_steps()


@pytest.mark.slow
def test_train_py_two_processes_preempted_twice(tmp_path):
    """train.py with --coordinator/--num_processes/--process_id, the same job twice (two
    workdirs, one compilation cache of its own). Each time:

    - both processes evaluate the same model (identical val mIoU lines at steps 2 and 4), only
      process 0 writes metrics (one loss row per step, no duplicates);
    - (issue 14.3) SIGTERM reaches process 1 only: JAX's preemption sync service agrees a step,
      both processes save it together (one checkpoint) and exit errors.EXIT_PREEMPTED; no hang.

    The old SIGTERM test (a fresh job right after another two-process test in the same session)
    aborted in 4 of 6 runs with "Gloo context initialization failed: GetKeyValue() timed out"
    (30 s): one process entered a cross-process collective over 30 s before the other. Not
    reproduced in this form; see NOTES.md ("gloo context timeout").
    """
    env_extra = {
        "DECONVNET_CACHE": str(tmp_path / "data"),
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),  # this test's own
    }
    for job in ("run1", "run2"):
        run = tmp_path / job
        outs, logged = _preempted_pair(run, env_extra)
        said = [line for out in outs for line in out.splitlines() if line.startswith("preempted")]
        assert len(said) == 2 and said[0] == said[1], (job, said)
        step = int(said[0].split()[3].rstrip(";"))
        assert step >= 4 and logged == list(range(1, step + 1)), (job, step, logged)
        steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
        assert steps[-1] == step and all(s % 2 == 0 for s in steps[:-1]), (job, steps)
        for k in (2, 4):
            val = [ln for out in outs for ln in out.splitlines() if ln.startswith(f"step {k}: val")]
            assert len(val) == 2 and val[0] == val[1], (job, val)


def test_compile_skew_over_gloo_timeout_is_waited_out(tmp_path):
    """parallel.compiled_together: process 1 reaches a program's first cross-process collective
    40 s after process 0 (what a persistent-cache hit on process 0 only does; CI stop 22 failed so
    in train.py). Bare jax.jit fails there with "Gloo context initialization failed:
    GetKeyValue() timed out" (gloo's fixed 30 s, reproduced with MODE=jit by hand); the
    coordination-service barrier after compiling waits it out. ~45 s of wall time, ~3 s of CPU."""
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    procs, outs = _run_worker_pair(
        "multihost_skew_worker.py", lambda i: [str(i), port, "40", "together"], env, timeout=300
    )
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "sum=10.0" in out, out[-3000:]  # 1 + 2 + 3 + 4 over both processes' devices
