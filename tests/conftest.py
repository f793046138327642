"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the session, inherited by the train.py / eval.py
# subprocesses the tests start: the same tiny programs (init, train step, eval step) are compiled
# by many tests and processes, and compiling dominates their cost on 2 CPU cores. Fresh per session
# (removed at exit), so no test depends on an earlier run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402
    import tempfile  # noqa: E402

    _cache = tempfile.mkdtemp(prefix="deconvnet_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_VOC = os.environ.get(
    "DECONVNET_VOC_SAMPLES",
    str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_samples"),
)


@pytest.fixture(scope="session")
def voc_samples() -> pathlib.Path:
    """Root of the real VOC 2012 samples (VOCdevkit/VOC2012 layout); skips when absent."""
    root = pathlib.Path(SHARED_VOC)
    if not (root / "JPEGImages").is_dir():
        pytest.skip(
            f"real VOC samples not found at {root} (set DECONVNET_VOC_SAMPLES to a "
            "VOCdevkit/VOC2012-layout folder to run these tests)"
        )
    return root
