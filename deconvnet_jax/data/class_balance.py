"""Class weights for the pixel loss from a split's label statistics.

`median_frequency_weights` is the median-frequency balancing of SegNet (Badrinarayanan, Kendall,
Cipolla 2017, after Eigen & Fergus 2015): freq(c) = pixels of class c / valid pixels of the
images that contain c, and w(c) = median over classes of freq / freq(c). Background, the most
frequent class, gets a weight below 1 and rare classes above. Not part of DeconvNet's recipe
(the paper trains with the plain mean); the CPU demo tried it and uses a Dice term instead
(configs/demo.py says why).
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from deconvnet_jax.data.voc import IGNORE_LABEL


def label_counts(labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, valid pixels of the images containing each class) over `labels`
    (an iterable of [H, W] integer masks; IGNORE_LABEL pixels are left out)."""
    pixels = np.zeros(num_classes, np.int64)
    present_in = np.zeros(num_classes, np.int64)
    for label in labels:
        label = np.asarray(label)
        valid = label[label != IGNORE_LABEL].astype(np.int64)
        if valid.size and valid.max() >= num_classes:
            raise ValueError(f"label {valid.max()} >= num_classes={num_classes}")
        counts = np.bincount(valid, minlength=num_classes)
        pixels += counts
        present_in += np.where(counts > 0, valid.size, 0)
    return pixels, present_in


def median_frequency_weights(pixels: np.ndarray, present_in: np.ndarray) -> np.ndarray:
    """w(c) = median(freq) / freq(c) over the classes that occur; 1 for classes that never do
    (their weight never multiplies a loss term)."""
    seen = pixels > 0
    if not seen.any():
        raise ValueError("no labelled pixels: cannot compute class frequencies")
    freq = np.where(seen, pixels / np.maximum(present_in, 1), 0.0)
    weights = np.ones(len(pixels), np.float64)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return weights


def split_weights(dataset, num_classes: int, method: str) -> np.ndarray:
    """The class weights `method` ("median_frequency") of every mask of `dataset` (an object
    with __len__ and __getitem__ -> dict with "label", or None for a skipped example)."""
    if method != "median_frequency":
        raise ValueError(f"unknown class-weight method {method!r}")

    def labels():
        for k in tqdm(range(len(dataset)), desc="class frequencies", leave=False):
            example = dataset[k]
            if example is not None:
                yield example["label"]

    return median_frequency_weights(*label_counts(labels(), num_classes))
