"""What the kit says before it runs anything: the header line and ``--zoo-list``'s table.

Versions never import anything (torch is loaded already whenever models are selected); the list
builds each model structurally, offline, to count its parameters and read its head.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..zoo.families import find_family

__all__ = ["ModelRow", "header_line", "list_rows", "render_list", "table", "version"]


def version(dist: str) -> str:
    """The loaded module's ``__version__`` (it has the build tag, e.g. ``+cu130``), else metadata."""
    module = sys.modules.get(dist)
    if module is not None and isinstance(getattr(module, "__version__", None), str):
        return str(module.__version__)
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header_line(selected: int, device: str, requested_device: str) -> str:
    """``zoo: 3 model(s) selected, device cpu (auto), torch 2.14.1, torchvision 0.29.1``.

    Versions never import anything: torch is loaded already whenever models are selected.
    """
    how = f" ({requested_device})" if requested_device != device else ""
    return (
        f"zoo: {selected} model(s) selected, device {device}{how}, "
        f"torch {version('torch')}, torchvision {version('torchvision')}"
    )


# -- --zoo-list ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRow:
    name: str
    task: str
    family: str
    #: The head paths the kit's adapter replaces, or why there is none.
    adapter: str
    parameters: int | None
    classes: int | None
    weights: tuple[str, ...]
    default_weights: str | None
    #: Why the model could not be built structurally, when it could not.
    problem: str | None = None


def _weights(name: str) -> tuple[tuple[str, ...], str | None]:
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(name)
    except (ValueError, KeyError):
        return (), None
    members = tuple(f"{enum.__name__}.{member.name}" for member in enum)
    default = getattr(enum, "DEFAULT", None)
    return members, (f"{enum.__name__}.{default.name}" if default is not None else None)


def list_row(name: str) -> ModelRow:
    """Describe one model from a structural build (no weight memory, no download)."""
    from ..models.building import build_model
    from ..models.heads import find_adapter, layer_outputs

    family = find_family(name)
    weights, default = _weights(name)
    task = family.task if family else "unknown"
    family_name = family.name if family else "unknown"
    try:
        model = build_model(name, structural=True)
    except Exception as exc:  # a listing must not stop at one model; the row says what happened
        problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        return ModelRow(name, task, family_name, "?", None, None, weights, default, problem)
    adapter = find_adapter(model)
    classes = None
    if adapter is None:
        adapter_text = "no adapter"
    else:
        try:
            present = adapter.present_heads(model)
        except LookupError:  # NoHeadError: a model that predicts no classes (optical flow)
            adapter_text = "no class head"
        else:
            adapter_text = _compact(present)
            head = model.get_submodule(present[0])
            # a detection head has k outputs per class (anchors, box coordinates)
            classes = layer_outputs(head) // adapter.multiple(present[0]) or None
    parameters = sum(p.numel() for p in model.parameters())
    return ModelRow(name, task, family_name, adapter_text, parameters, classes, weights, default)


def _compact(paths: Sequence[str]) -> str:
    """``a.list.0.1, a.list.1.1, a.list.2.1`` -> ``a.list.{0..2}.1``: SSD has a head per feature map.

    Paths that differ only in one numeric component, over a consecutive range of 3 or more, are
    shown once; everything else as it is, in the adapter's order.
    """
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for path in paths:
        tokens = path.split(".")
        signature = tuple("#" if t.isdigit() else t for t in tokens)
        groups.setdefault(signature, []).append(tokens)
    shown: list[str] = []
    for members in groups.values():
        varying = [i for i in range(len(members[0])) if len({m[i] for m in members}) > 1]
        values = [int(m[varying[0]]) for m in members] if len(varying) == 1 else []
        if len(values) > 2 and values == list(range(values[0], values[0] + len(values))):
            tokens = list(members[0])
            tokens[varying[0]] = f"{{{values[0]}..{values[-1]}}}"
            shown.append(".".join(tokens))
        else:
            shown += [".".join(m) for m in members]
    return ", ".join(shown)


def list_rows(names: Iterable[str]) -> list[ModelRow]:
    return [list_row(name) for name in names]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_list(rows: Sequence[ModelRow]) -> list[str]:
    """The ``--zoo-list`` table, one line per model, then a note for each model that did not build."""
    header = ("model", "task", "family", "head (adapter)", "parameters", "classes", "weights")
    cells = []
    for row in rows:
        names = [w.split(".", 1)[1] for w in row.weights]
        default = row.default_weights.split(".", 1)[1] if row.default_weights else None
        weights = ", ".join(f"{n}*" if n == default else n for n in names) or "-"
        enum = row.weights[0].split(".", 1)[0] + ": " if row.weights else ""
        cells.append(
            (
                row.name,
                row.task,
                row.family,
                row.adapter,
                f"{row.parameters:,}" if row.parameters is not None else "?",
                str(row.classes) if row.classes is not None else "-",
                enum + weights,
            )
        )
    lines = table(header, cells, right={4, 5})
    lines.append(f"{len(rows)} model(s); * marks the DEFAULT weights; parameters as the kit builds them.")
    lines += [f"{row.name}: could not be built offline: {row.problem}" for row in rows if row.problem]
    return lines
