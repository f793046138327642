"""One process of the two-process CPU run in test_train_multihost.py (not a test module itself).

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Each process has 4 CPU devices; jax.distributed joins them (gloo collectives) into one 8-device
mesh. Every process feeds only its own half of each global batch (parallel.global_batch ->
jax.make_array_from_process_local_data), runs the same two train steps as the single-process test,
and writes its losses and the (replicated) parameters and BN statistics it holds. Float64 (as the
single-process test): structural equality must not depend on float32 reduction order.
"""

import os
import sys

# The caller's other XLA flags stay (an ISA limit such as --xla_cpu_max_isa=AVX2).
_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
os.environ["XLA_FLAGS"] = " ".join([*_flags, "--xla_force_host_platform_device_count=4"])
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]


def main() -> None:
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    from deconvnet_jax import parallel

    # init_distributed also selects gloo CPU collectives (JAX_PLATFORMS=cpu)
    jax.config.update("jax_enable_x64", True)
    parallel.init_distributed(f"127.0.0.1:{port}", nproc, pid)
    assert jax.process_count() == nproc and jax.device_count() == 4 * nproc, jax.devices()
    from test_train_parallel import _batches, _setup

    mesh, state, step, _ = _setup(jax.device_count(), 1, dtype="float64")
    step = parallel.compiled_together(step, "worker_step")  # as trainer.setup does
    losses = []
    per_process = None
    for batch in _batches(dtype=np.float64):
        per_process = batch["image"].shape[0] // nproc
        local = {k: v[pid * per_process : (pid + 1) * per_process] for k, v in batch.items()}
        state, metrics = step(state, parallel.global_batch(local, mesh))
        losses.append(float(metrics["loss"]))
    leaves = {}
    for path, leaf in jax.tree.leaves_with_path(
        {"params": state.params, "batch_stats": state.batch_stats}
    ):
        leaves[jax.tree_util.keystr(path)] = np.asarray(leaf.addressable_shards[0].data)
    np.savez(out, losses=np.asarray(losses), local_batch=per_process, **leaves)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
