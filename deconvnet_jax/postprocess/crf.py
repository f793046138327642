"""Fully connected CRF post-processing (Krähenbühl & Koltun 2011) over softmax probabilities.

PAPER.md "Inference": the release's optional CRF runs 10 mean-field iterations with a Gaussian
(smoothness) kernel of sxy 3, weight 3 and a bilateral (appearance) kernel of sxy 20, srgb 3,
weight 5, both Potts, over unaries -log(p). The computation is Krähenbühl's C++ code through
the optional package `pydensecrf2` (import name `pydensecrf`; install with
`pip install 'deconvnet_jax[crf]'` or `pip install pydensecrf2==1.1`: it builds from source with
a C++ compiler in about a minute). Without it, `crf_available()` is False and `dense_crf` raises
an ImportError saying how to install it.
"""

from __future__ import annotations

import numpy as np

INSTALL_HINT = (
    "dense_crf needs the optional package pydensecrf2 (import name 'pydensecrf'): "
    "pip install 'deconvnet_jax[crf]'  or  pip install pydensecrf2==1.1  "
    "(builds from source: needs g++ and Python headers)"
)
PROB_FLOOR = 1e-5  # probabilities are clipped here before -log (pydensecrf.utils' default)


def _densecrf_module():
    try:
        import pydensecrf.densecrf as dcrf  # optional dependency
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return dcrf


def crf_available() -> bool:
    """True when the dense CRF package (pydensecrf2) can be imported."""
    try:
        _densecrf_module()
    except ImportError:
        return False
    return True


def _check_inputs(image: np.ndarray, probs: np.ndarray, iterations: int) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"dense_crf: image must be uint8 [H, W, 3], got {image.dtype} {image.shape}"
        )
    if probs.ndim != 3 or probs.shape[2] < 2:
        raise ValueError(f"dense_crf: probs must be [H, W, C] with C >= 2, got shape {probs.shape}")
    if probs.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"dense_crf: probs {probs.shape[:2]} and image {image.shape[:2]} differ in size"
        )
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1 + 1e-3:
        raise ValueError(
            f"dense_crf: probs must be probabilities in [0, 1], got range "
            f"[{np.nanmin(probs)}, {np.nanmax(probs)}] (pass softmax outputs, not logits)"
        )
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"dense_crf: iterations must be a non-negative integer, got {iterations}")


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int = 10,
    gaussian_sxy: float = 3,
    gaussian_weight: float = 3,
    bilateral_sxy: float = 20,
    bilateral_srgb: float = 3,
    bilateral_weight: float = 5,
) -> np.ndarray:
    """Mean-field inference of the fully connected CRF; the defaults are the release's.

    Args:
      image: uint8 RGB image [H, W, 3] (the bilateral kernel's colours).
      probs: class probabilities [H, W, C] (e.g. a softmax or `ensemble.combine` output);
        the unaries are -log(max(probs, 1e-5)).
      iterations: mean-field iterations (0 returns the normalised `probs`).
      gaussian_sxy / gaussian_weight: smoothness kernel std (pixels) and Potts weight.
      bilateral_sxy / bilateral_srgb / bilateral_weight: appearance kernel stds (pixels,
        colour levels) and Potts weight.
    Returns:
      float32 probabilities [H, W, C] after inference (argmax over C gives the labels).
    Raises:
      ImportError: pydensecrf2 is not installed (with the install command).
      ValueError: bad shapes, dtype or values (naming the argument).
    """
    dcrf = _densecrf_module()
    image, probs = np.asarray(image), np.asarray(probs, np.float32)
    _check_inputs(image, probs, iterations)
    h, w, c = probs.shape
    unary = -np.log(np.maximum(probs, PROB_FLOOR))  # [H, W, C]
    unary = np.ascontiguousarray(unary.reshape(h * w, c).T)  # [C, H * W], row-major pixels
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_weight)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy,
        srgb=bilateral_srgb,
        rgbim=np.require(image, np.uint8, ["C", "W"]),  # writable copy if
        compat=bilateral_weight,
    )  # read-only (pydensecrf rejects those)
    q = np.asarray(crf.inference(int(iterations)), np.float32)  # [C, H * W]
    return np.ascontiguousarray(q.T.reshape(h, w, c))
