"""Random network variables for the tests, built in NumPy from ``jax.eval_shape`` (not a test
module): no flax init to compile, the same values on every machine, O(1) activations."""

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(model, seed: int = 0, dtype=np.float32, hw=(224, 224)) -> dict:
    """He-normal kernels, biases / BN shifts / BN means ~ N(0, 0.1), BN scales and variances
    ~ U(0.5, 1.5), for the variable shapes of ``model`` at input size ``hw``."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *hw, 3)))

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            return (rng.standard_normal(s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))).astype(dtype)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, s.shape).astype(dtype)
        return rng.normal(0, 0.1, s.shape).astype(dtype)  # bias, BN shift, BN mean

    return jax.tree.map_with_path(leaf, shapes)
