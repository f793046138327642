"""Every path a user gives (workdirs, data, weights, outputs) as an ``etils.epath.Path``.

Local paths and object-store URLs (``gs://``, ``s3://``, ``az://``, ``hf://``: epath's schemes,
read through fsspec: ``pip install gcsfs`` for ``gs://``) share one API. What object stores lack
is handled here: no append (``rewrite_text`` writes a file whole), no file names for libraries
that open files themselves (``local_copy``), and no in-place image or figure writes
(``write_image``, ``save_figure``: encoded in memory, then ``write_bytes``). Local paths keep
their usual behaviour: ``absolute`` is pathlib's, and ``local_copy`` hands the file itself over.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import shutil
import tempfile
from typing import Iterator

from etils import epath

from deconvnet_jax.errors import UserError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SCHEMES = ("gs", "s3", "az", "hf")  # epath's URL schemes


class PathError(UserError, ValueError):
    """A path with a URL scheme epath cannot open (one line naming it)."""


def as_path(path: str | os.PathLike) -> epath.Path:
    """``path`` (a string, a pathlib path or an epath) as an ``epath.Path``.

    Raises:
      PathError for a URL scheme epath does not know (``memory://``, ``http://``), which would
      otherwise become a local folder named after the scheme.
    """
    if isinstance(path, epath.Path):
        return path
    text = os.fspath(path)
    match = _SCHEME.match(text)
    if match and match.group(1) not in SCHEMES:
        raise PathError(
            f"{text}: unsupported URL scheme {match.group(1)!r} "
            f"(supported: {', '.join(s + '://' for s in SCHEMES)} and local paths)"
        )
    return epath.Path(text)


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an object-store URL (not on the local file system)."""
    match = _SCHEME.match(os.fspath(path))
    return bool(match) and match.group(1) in SCHEMES


def absolute(path: str | os.PathLike) -> epath.Path:
    """``path`` made absolute against the working directory when local; URLs as they are
    (pathlib's ``absolute()`` would turn ``gs://b/x`` into ``<cwd>/gs:/b/x``)."""
    path = as_path(path)
    return path if is_remote(path) else epath.Path(pathlib.Path(path).absolute())


def rewrite_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` as the whole file (object stores have no append)."""
    as_path(path).write_text(text)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A local file name for ``path``, for libraries that open files themselves (torch.load,
    OpenCV, the Caffe reader's readinto): the file itself when local, else a temporary copy
    (removed on exit; named like the original, so suffix checks still work).

    Raises:
      FileNotFoundError naming ``path`` when it is not a file.
    """
    path = as_path(path)
    if not is_remote(path):
        yield pathlib.Path(path)
        return
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    tmp = tempfile.mkdtemp(prefix="deconvnet_jax-")
    try:
        local = pathlib.Path(tmp) / path.name
        with path.open("rb") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_image(image, path: str | os.PathLike, **save_kwargs) -> epath.Path:
    """Saves a PIL image, its format from the suffix, encoded in memory then written whole."""
    from PIL import Image

    path = as_path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file extension {path.suffix!r}")
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    path.write_bytes(buf.getvalue())
    return path


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> epath.Path:
    """``fig.savefig`` (format from the suffix) into memory, then written whole."""
    path = as_path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower(), **savefig_kwargs)
    path.write_bytes(buf.getvalue())
    return path
