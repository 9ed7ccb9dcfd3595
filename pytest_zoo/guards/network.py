"""Keeping zoo tests off the network and out of the user's real ``TORCH_HOME``.

A model zoo test that silently downloads 500 MB of weights is the flaky, slow part of someone
else's CI. Inside :func:`network_guard` every route to the network fails at once with the URL or
address it tried: ``socket.connect`` (and so ``http.client``, ``requests``, ...), ``urlopen`` (and
so ``torch.hub``), DNS lookups of remote names, and ``torch.hub.download_url_to_file``.

``TORCH_HOME`` points at a private temporary directory for the duration, so whatever torch.hub
would cache lands there and is deleted afterwards. Reading a checkpoint that a test placed in
``<guard.torch_home>/hub/checkpoints/`` still works: ``load_state_dict_from_url`` looks there
first and never reaches the network when the file exists.

The blocked call raises :class:`NetworkAccessError`, which is deliberately *not* an ``OSError``:
libraries catch ``OSError``/``URLError`` to retry or fall back quietly, and a quiet fallback would
hide the attempt. Every attempt is also recorded in :attr:`NetworkGuard.attempts`, so a caller can
fail a test whose code swallowed the error anyway.

Nothing here imports torch: the guard patches ``torch.hub`` only when torch is already loaded
(when it is not, ``torch.hub`` downloads still go through the patched ``urlopen``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

__all__ = ["NetworkAccessError", "NetworkGuard", "network_guard"]

_LOCAL_NAMES = frozenset({"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class NetworkAccessError(RuntimeError):
    """A zoo test tried to reach the network; the message names the URL or address."""


@dataclass
class NetworkGuard:
    """What a running :func:`network_guard` knows: where ``TORCH_HOME`` points, and what was tried."""

    #: The temporary ``TORCH_HOME`` in force inside the guard.
    torch_home: Path
    #: Whether connections to loopback addresses (127.0.0.0/8, ::1) are let through.
    allow_loopback: bool = False
    #: One line per blocked attempt, e.g. ``"urlopen https://download.pytorch.org/models/x.pth"``.
    attempts: list[str] = field(default_factory=list)

    def block(self, what: str) -> NetworkAccessError:
        """Record an attempt and build the error to raise for it."""
        self.attempts.append(what)
        return NetworkAccessError(
            f"pytest-zoo blocked network access: {what}. Zoo tests run offline: torchvision's own "
            "checkpoints are served from local files (fabricated, or your real ones from the "
            "directories named by ini zoo_checkpoints or PYTEST_ZOO_CHECKPOINTS); anything else must "
            f"be loaded from a local file (TORCH_HOME is the temporary {self.torch_home})."
        )

    def _is_loopback(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        if host.lower() in _LOCAL_NAMES:
            return True
        try:
            return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
        except ValueError:
            return False

    def _check_address(self, sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # AF_UNIX and friends never leave the machine
        host = address[0] if isinstance(address, tuple) and address else address
        if self.allow_loopback and self._is_loopback(host):
            return
        raise self.block(f"socket connect to {_format_address(address)}")

    def _check_lookup(self, host: object, port: object = None) -> None:
        if host is None or self._is_loopback(host):
            return
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        try:
            ipaddress.ip_address(str(host).split("%", 1)[0])
            return  # a numeric address resolves locally; connecting to it is what gets blocked
        except ValueError:
            pass
        where = f"{host}:{port}" if port not in (None, 0, "") else str(host)
        raise self.block(f"DNS lookup of {where}")


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return repr(address)


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """Set one environment variable for the block, and restore just that one.

    Not ``mock.patch.dict(os.environ, ...)``: that restores the whole environment on exit, which
    would undo every variable the guarded code set, and so hide from the state-leak guard the
    very leaks it exists to report.
    """
    had, old = name in os.environ, os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if had:
            os.environ[name] = old  # type: ignore[assignment]
        else:
            os.environ.pop(name, None)


def _request_url(request: object) -> str:
    if isinstance(request, urllib.request.Request):
        return request.full_url
    return str(request)


@contextlib.contextmanager
def network_guard(
    *, torch_home: Path | str | None = None, allow_loopback: bool = False
) -> Iterator[NetworkGuard]:
    """Block every network access and redirect ``TORCH_HOME`` until the block exits.

    ``torch_home`` is the directory to use as ``TORCH_HOME`` (kept afterwards); by default a fresh
    temporary directory is made and deleted on exit. Everything patched is restored on exit, also
    when the body raises, and guards nest.
    """
    owned = torch_home is None
    home = Path(tempfile.mkdtemp(prefix="pytest-zoo-torch-home-") if torch_home is None else torch_home)
    guard = NetworkGuard(torch_home=home, allow_loopback=allow_loopback)

    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_getaddrinfo = socket.getaddrinfo
    original_gethostbyname = socket.gethostbyname
    original_gethostbyname_ex = socket.gethostbyname_ex

    def connect(self: socket.socket, address: Any) -> None:
        guard._check_address(self, address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        guard._check_address(self, address)
        return original_connect_ex(self, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        guard._check_lookup(host, port)
        return original_getaddrinfo(host, port, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        guard._check_lookup(host)
        return original_gethostbyname(host)

    def gethostbyname_ex(host: str) -> Any:
        guard._check_lookup(host)
        return original_gethostbyname_ex(host)

    original_open = urllib.request.OpenerDirector.open

    def opener_open(self: urllib.request.OpenerDirector, fullurl: Any, *args: Any, **kwargs: Any) -> Any:
        url = _request_url(fullurl)
        local = url.startswith(("file:", "data:")) or (
            guard.allow_loopback and guard._is_loopback(urllib.parse.urlsplit(url).hostname)
        )
        if not local:
            raise guard.block(f"urlopen {url}")
        return original_open(self, fullurl, *args, **kwargs)

    def download_url_to_file(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise guard.block(f"torch.hub download of {url} (to {dst})")

    with contextlib.ExitStack() as stack:
        if owned:
            stack.callback(shutil.rmtree, home, ignore_errors=True)
        stack.enter_context(_environ("TORCH_HOME", str(home)))
        patches: list[tuple[object, str, Callable[..., Any]]] = [
            (socket.socket, "connect", connect),
            (socket.socket, "connect_ex", connect_ex),
            (socket, "getaddrinfo", getaddrinfo),
            (socket, "gethostbyname", gethostbyname),
            (socket, "gethostbyname_ex", gethostbyname_ex),
            (urllib.request.OpenerDirector, "open", opener_open),
        ]
        hub = sys.modules.get("torch.hub")
        if hub is not None:
            patches.append((hub, "download_url_to_file", download_url_to_file))
            # torch.hub.set_dir() wins over TORCH_HOME; point it into the temporary home as well.
            if hasattr(hub, "_hub_dir"):
                stack.enter_context(mock.patch.object(hub, "_hub_dir", str(home / "hub")))
        for target, name, replacement in patches:
            stack.enter_context(mock.patch.object(target, name, replacement))
        yield guard
