"""One process of test_train_multihost.py's compile-skew test (not a test module itself).

  python tests/multihost_skew_worker.py PROCESS_ID PORT SKEW_S MODE

Two processes with 2 CPU devices each, joined by jax.distributed (gloo). Process 1 waits SKEW_S
seconds (a cold compile while process 0 read the compilation cache) before it calls a jitted
all-device sum, a cross-process collective; MODE "jit" calls jax.jit's function itself,
"together" wraps it in parallel.compiled_together. Prints "sum=<value>" on success.
"""

import os
import sys
import time

_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
os.environ["XLA_FLAGS"] = " ".join([*_flags, "--xla_force_host_platform_device_count=2"])
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    pid, port, skew, mode = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    from deconvnet_jax import parallel

    parallel.init_distributed(f"127.0.0.1:{port}", 2, pid)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("d",))
    sharded = NamedSharding(mesh, P("d"))
    local = np.arange(2 * pid, 2 * pid + 2, dtype=np.float32) + 1.0  # 1..4 over the processes
    x = jax.make_array_from_process_local_data(sharded, local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
    if mode == "together":
        total = parallel.compiled_together(total, "skew_test_sum")
    if pid == 1:
        time.sleep(skew)
    print(f"sum={float(jax.device_get(total(x)))}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
