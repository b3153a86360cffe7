"""Atomic file creation, shared by fetch() and calibrate's writer."""

import os
import uuid
from typing import BinaryIO, Callable


def write_atomically(path: str, write: Callable[[BinaryIO], None], *,
                     tag: str, overwrite: bool = False) -> None:
    """Creates the file `path` with the bytes write(f) writes to f.

    The bytes go to a hidden temporary file beside `path`
    (".NAME.TAG-PID-RANDOM"), fsynced, then linked onto `path` (never
    replacing a file: FileExistsError) or, with `overwrite`, renamed over
    it; the directory is fsynced. On any error, write()'s included, the
    temporary file is removed and nothing is left behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".%s.%s-%d-%s" % (
        os.path.basename(path), tag, os.getpid(), uuid.uuid4().hex[:8]))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC |
                 getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists (or appeared meanwhile)
            os.unlink(tmp)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
