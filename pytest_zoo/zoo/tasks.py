"""The one task vocabulary: the words ``--zoo-tasks``, the family table, snapshots and weights use.

torchvision files quantized builders under ``torchvision.models.quantization``; the kit calls that
task ``quantized`` everywhere (the builders are ``quantized_*``). Snapshot files written before
the vocabulary was one say ``quantization``, and still load (:func:`current_task`).
"""

from __future__ import annotations

__all__ = ["TASKS", "current_task", "filed_task"]

#: The tasks of the zoo, in the order torchvision documents them; ``--zoo-tasks`` accepts these.
TASKS = ("classification", "detection", "segmentation", "video", "optical_flow", "quantized")

#: The ``torchvision.models`` subpackage each non-classification task's builders live in.
_SUBPACKAGES = {
    "detection": "detection",
    "segmentation": "segmentation",
    "video": "video",
    "optical_flow": "optical_flow",
    "quantization": "quantized",
}


def filed_task(module: str) -> str:
    """The task of a builder defined in ``module``, by torchvision's package layout (as its tests do)."""
    parts = module.split(".")
    if parts[:2] == ["torchvision", "models"] and len(parts) > 3:
        return _SUBPACKAGES.get(parts[2], "classification")
    return "classification"


def current_task(word: str) -> str:
    """``word`` in today's vocabulary: files recorded by earlier versions say ``quantization``."""
    return _SUBPACKAGES.get(word, word)
