"""Small helpers over nested parameter dicts, shared by the weight importers (torch/weights.py,
interop/caffe.py): read / write a leaf by path, host NumPy copies, and checked lookups that name the
file and key when a weight is missing or mis-shaped."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def get_path(tree: Mapping, path: Sequence[str]) -> Any:
    """tree[path[0]][path[1]]..."""
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: Sequence[str], value: Any) -> None:
    """Sets tree[path[0]]...[path[-1]] = value, creating the intermediate dicts."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy array of a jax / NumPy array or a torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def numpy_tree(tree: Any) -> Any:
    """A nested dict of NumPy arrays (a copy of the structure; leaves converted)."""
    if isinstance(tree, Mapping):
        return {k: numpy_tree(v) for k, v in tree.items()}
    return np.array(to_numpy(tree))


def checked(weights: Mapping, key: str, shape: Sequence[int], source: str) -> np.ndarray:
    """weights[key] as float32, checked to exist and to have `shape`.

    Raises:
      KeyError / ValueError naming `source` (a file) and the key.
    """
    if key not in weights:
        raise KeyError(f"{source}: missing key {key!r}")
    value = to_numpy(weights[key]).astype(np.float32)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}"
        )
    return value
