"""The one way the kit writes a file that someone else may read: atomically.

A reader (another xdist process, a later run, a crash) sees the old file or the new one, never half
of either: the content goes to a temporary file in the same directory, is flushed to disk, and
replaces the target in one rename. A failure leaves the target untouched and no temporary behind.
A scratch file that dies with the session (a served checkpoint) skips the flush: a crash loses it
with the session, and flushing forced gigabytes to the disk only to delete them seconds later.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["replace_atomically", "write_text_atomically"]


def replace_atomically(path: Path, save: Callable[[Path], object], *, durable: bool = True) -> None:
    """Let ``save`` write a temporary file beside ``path``, then make it ``path`` in one rename.

    The result keeps the permissions of the file it replaces; a new one gets the permissions any
    new file would get (the temporary is made 0600 by ``mkstemp``). ``durable=False`` leaves the
    content in the page cache instead of waiting for the disk: every process on the machine reads
    it the same, only a crash of the machine may lose it.
    """
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        save(tmp)
        if durable:
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
        tmp.chmod(mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """:func:`replace_atomically` for text: UTF-8, ``\\n`` line ends on every platform."""
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))
