"""The PyTorch wing: reference networks (reference.py) and state-dict conversion (weights.py).

torch is an optional dependency (the `test` extra); importing this package without it raises an
ImportError that says what to install. Nothing in the JAX library imports this package at module
level.
"""

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "deconvnet_jax.torch needs PyTorch: pip install 'deconvnet_jax[test]' "
        "(or pip install -r requirements-test.txt)"
    ) from e
