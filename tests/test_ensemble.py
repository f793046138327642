"""EDeconvNet ensemble rules against a NumPy reference written out per pixel."""

import math

import jax
import numpy as np
import pytest

from deconvnet_jax.postprocess.ensemble import RULES, combine


def _softmax_loop(v):
    m = max(v)
    e = [math.exp(x - m) for x in v]
    return [x / sum(e) for x in e]


def _reference(deconv, fcn, rule):
    """Pixel by pixel, in float64 Python arithmetic."""
    out = np.zeros(deconv.shape, np.float64)
    for idx in np.ndindex(deconv.shape[:-1]):
        d, f = deconv[idx].tolist(), fcn[idx].tolist()
        if rule == "product":
            out[idx] = _softmax_loop([max(b, 0.0) * a for a, b in zip(d, f)])
        else:
            out[idx] = [(a + b) / 2 for a, b in zip(_softmax_loop(d), _softmax_loop(f))]
    return out


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("shape", [(5, 7, 21), (2, 3, 4, 6)])
def test_rules_match_numpy_reference(rule, shape):
    rng = np.random.default_rng(0)
    deconv = rng.normal(0, 8, shape).astype(np.float32)
    deconv[..., 0] = np.maximum(deconv[..., 0], 0)  # proposal-max maps are >= 0
    fcn = rng.normal(0, 8, shape).astype(np.float32)
    got = np.asarray(combine(deconv, fcn, rule))
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, _reference(deconv, fcn, rule), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    jitted = jax.jit(combine, static_argnames="rule")(deconv, fcn, rule=rule)
    np.testing.assert_allclose(np.asarray(jitted), got, rtol=1e-6, atol=1e-7)


def test_rules_differ_where_the_paper_and_release_disagree():
    # FCN is negative everywhere: the product rule ignores the DeconvNet scores (uniform),
    # the mean rule still follows them.
    deconv = np.array([[5.0, 0.0, 0.0]], np.float32)
    fcn = np.array([[-1.0, -2.0, -3.0]], np.float32)
    product = np.asarray(combine(deconv, fcn, "product"))
    np.testing.assert_allclose(product, [[1 / 3] * 3], rtol=1e-6)
    assert int(np.argmax(np.asarray(combine(deconv, fcn, "mean")))) == 0


def test_bad_rule_and_shapes_are_clear_errors():
    a = np.zeros((4, 4, 21), np.float32)
    with pytest.raises(ValueError, match="unknown ensemble rule 'max'.*product.*mean"):
        combine(a, a, "max")
    with pytest.raises(ValueError, match=r"deconv_scores \(4, 4, 21\) vs fcn_scores \(4, 4, 20\)"):
        combine(a, a[..., :20], "mean")
    with pytest.raises(ValueError, match="class axis"):
        combine(np.float32(1), np.float32(2), "mean")
