"""Lets torchvision 0.28.0 import beside torch 2.13.0+cpu, for the oldest-pair CI run only.

The registry's torchvision 0.28.0 is built against the CUDA build of torch 2.13.0: its C++ ops
(``torchvision/_C.so``) link ``libtorch_cuda.so``, which the CPU build on local disk does not
have, so they do not load, and ``torchvision/_meta_registrations.py`` then fails on
``register_fake("torchvision::nms")`` for an operator that does not exist. This module declares
the two operators that file registers unguarded, ``nms`` and ``qnms`` (schemas only, no
implementation), before it runs, so the pure-Python part of
torchvision imports; ``torchvision.ops`` still reports its C++ ops as missing
(``_has_ops() is False``), so whatever needs nms, roi_align & co. fails loudly. .ci/run installs
it into .venv-old only, through a .pth file; nothing in the package or the main venv uses it.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any


class _DeclareNms(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "torchvision._meta_registrations":
            import torch

            for op in ("nms", "qnms"):
                try:
                    torch.library.define(
                        f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                    )
                except RuntimeError:  # the C++ ops did load: nothing to declare
                    pass
            sys.meta_path.remove(self)
        return None  # the normal finders load the module


sys.meta_path.insert(0, _DeclareNms())
