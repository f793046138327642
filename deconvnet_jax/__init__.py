"""deconvnet_jax: DeconvNet (Noh, Hong, Han, ICCV 2015) in JAX/Flax."""

__version__ = "0.1.0"
