"""Atomic artifact writes: temp file in the same folder, fsync, rename.

A reader never sees a half-written file: either the old artifact or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import UserError

# errors that say the path itself is wrong (not the disk or the program): the user can fix them
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT,
                errno.EROFS, errno.ENAMETOOLONG}


@contextlib.contextmanager
def user_paths(path: Path | str, what: str = "cannot write") -> Iterator[None]:
    """Turn an OSError caused by `path` (a regular file where a folder should be, no permission,
    a directory where a file should be...) into a one-line UserError naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _PATH_ERRNOS:
            raise
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):     # a regular file where a folder should be
            blocker = _existing_ancestor(Path(exc.filename or path))
            raise UserError(f"{what} {path}: {blocker} is a regular file, not a folder") from None
        raise UserError(f"{what} {path}: {exc.strerror}"
                        + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else "")) from None


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_file(path: Path | str, what: str = "output") -> Path:
    """Refuse an output file path before any work: a directory, a path under a regular file, or a
    folder this process cannot write."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory: give a file path")
    _check_parent(p, what)
    return p


def check_output_dir(path: Path | str, what: str = "output folder") -> Path:
    """Refuse an output folder path before any work: a regular file, or under one, or unwritable."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a regular file, not a folder")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{what} {p} is not writable")
        return p
    _check_parent(p, what)
    return p


def _check_parent(p: Path, what: str) -> None:
    anc = _existing_ancestor(p.parent)
    if not anc.is_dir():
        raise UserError(f"{what} {p}: {anc} is a regular file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{what} {p}: folder {anc} is not writable")


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    with user_paths(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        with user_paths(path):
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return _atomic(path, w)


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_with(path: Path, writer: Callable[[str], None]) -> Path:
    """Atomically produce `path` with `writer(tmp_path)` (e.g. torch.onnx.export, safetensors)."""
    return _atomic(path, writer)


def save_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")
