"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
