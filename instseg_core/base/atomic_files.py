"""Files are written atomically: into a temporary file in the target's folder, then renamed over the target.

A reader (or a process killed mid-write) sees the old file or the new one, never a half-written one. The
temporary name starts with '.' and ends in '.tmp', so globbing for the target's suffix never finds it. The
file gets the permissions a plain `open(path, "w")` would give (0666 less the umask), not mkstemp's 0600.

An OSError that names no file (a write or close that fails with ENOSPC says only "No space left on device") is
raised again naming the target, so the command's one line says which file could not be written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it) and put back at once
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a file name (np.savez, torch.save, an
    ONNX export); on success it replaces `path`, on an exception it is removed and `path` is untouched.
    `suffix` is appended to the temporary name for writers that insist on one (np.savez adds '.npz')."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        if temporary.exists():
            os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomically(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write `data` to `path` atomically (creating its folder); returns the path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically (creating its folder); returns the path."""
    return write_bytes_atomically(path, text.encode())


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` (and its parents) and prove it writable by creating and removing a temporary file in it: what
    a command does before long work whose results go there, so a bad output path (a read-only or missing mount, a
    file in the way, no permission) fails at once, with the OSError naming the path, not after the work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file of that name: mkdir's EEXIST would say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from exc
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(folder)) from exc
        raise
    os.close(handle)
    os.unlink(name)
    return folder


def replace_with(finished: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put `finished` (a complete folder or file, written beside `path`) in place of `path` by renames: an existing
    `path` is moved aside first and removed after, or put back when the rename fails, so that a reader never finds
    a half-written `path`, and a failure leaves the old one. What was at `path` may be a folder or a file."""
    finished, path = Path(finished), Path(path)
    if not path.exists() and not path.is_symlink():
        os.rename(finished, path)
        return
    old = path.parent / f".{path.name}.replaced-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    try:
        os.rename(finished, path)
    except OSError:
        os.rename(old, path)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:  # a regular file (or a link) was there: nothing hidden left behind
        old.unlink(missing_ok=True)
