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

__all__ = ["MEMORY_BACKED", "replace_atomically", "scratch_dir", "write_text_atomically"]

#: Memory-backed storage (a tmpfs) for the kit's scratch files, where the system has one.
MEMORY_BACKED = Path("/dev/shm")


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


def scratch_dir(nbytes: int) -> Path:
    """The directory for a scratch file of about ``nbytes`` that is deleted within the test.

    Memory-backed (:data:`MEMORY_BACKED`) where it, and the machine's available memory, have room
    for the file twice over; else the temporary directory. A disk-backed file system costs the
    kernel several times the CPU for the same bytes (a 2.7 GB checkpoint: 2 to 5.5 CPU-s against
    0.9 on a tmpfs, on the 2-core machine of ``docs/speed.md``), and a writer past the kernel's
    dirty-page limit waits on the disk, for a file deleted seconds later. Twice over: another
    process (an xdist worker) may be writing one too. A container's default 64 MB ``/dev/shm``
    has no room for a model, so there the temporary directory is used.
    """
    fallback = Path(tempfile.gettempdir())
    try:
        stats = os.statvfs(MEMORY_BACKED)
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, AttributeError):  # no tmpfs, no /proc, no statvfs
        return fallback
    room = 2 * nbytes + (1 << 30)
    if stats.f_bavail * stats.f_frsize < room or available < room or not os.access(MEMORY_BACKED, os.W_OK):
        return fallback
    return MEMORY_BACKED
