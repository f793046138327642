"""EDeconvNet: DeconvNet and FCN-8s class scores to probabilities (PAPER.md "Inference").

Two rules, because the paper and the release disagree:
  product (the release): softmax(max(fcn, 0) * deconvnet), the FCN-8s scores clipped at 0 and
    multiplied element-wise with the DeconvNet scores (for DeconvNet, the proposal-aggregated map);
  mean (the paper): (softmax(deconvnet) + softmax(fcn)) / 2.
Both take raw scores (logits) of one shape [..., C] and return probabilities over the last axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

RULES = ("product", "mean")


def combine(deconv_scores: jax.Array, fcn_scores: jax.Array, rule: str = "product") -> jax.Array:
    """Ensemble of DeconvNet and FCN-8s scores.

    Args:
      deconv_scores: DeconvNet class scores [..., C] (e.g. [H, W, C] or [B, H, W, C]).
      fcn_scores: FCN-8s class scores of the same shape.
      rule: "product" (the release) or "mean" (the paper); see the module docstring.
    Returns:
      float32 probabilities [..., C] (sum 1 over the last axis). Jittable with `rule` static.
    Raises:
      ValueError: unknown rule, or the two score maps differ in shape.
    """
    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r} (expected one of {RULES})")
    deconv = jnp.asarray(deconv_scores, jnp.float32)
    fcn = jnp.asarray(fcn_scores, jnp.float32)
    if deconv.shape != fcn.shape:
        raise ValueError(
            f"ensemble needs score maps of one shape: deconv_scores {deconv.shape} vs "
            f"fcn_scores {fcn.shape}"
        )
    if deconv.ndim == 0:
        raise ValueError("ensemble needs score maps with a class axis [..., C], got scalars")
    if rule == "product":
        return jax.nn.softmax(jnp.maximum(fcn, 0.0) * deconv, axis=-1)
    return 0.5 * (jax.nn.softmax(deconv, axis=-1) + jax.nn.softmax(fcn, axis=-1))
