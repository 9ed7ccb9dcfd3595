"""The one deployment vocabulary: the words ``--zoo-deploy``, a gate's ``deploy`` and the
declared exceptions use, importable without torch so that a typo is a usage error at once."""

from __future__ import annotations

from typing import Literal

__all__ = ["METHODS", "Method"]

Method = Literal["export", "compile", "script", "fx"]
#: What ``test_deployability`` can check, in the order it checks them.
METHODS: tuple[Method, ...] = ("export", "compile", "script", "fx")
