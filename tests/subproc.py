"""Environment for the subprocesses tests start (not a test module)."""

import os


def xla_flags(device_count: int) -> str:
    """XLA_FLAGS for a child with `device_count` CPU devices, keeping the caller's other flags: an
    ISA limit (--xla_cpu_max_isa=AVX2) the suite runs under must reach its subprocesses too."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    return " ".join([*flags, f"--xla_force_host_platform_device_count={device_count}"])
