"""Upgrade regression snapshots: what the zoo looks like, recorded to a file and compared later.

Before a torchvision upgrade a user records the facts of every model (:func:`collect_facts`) to one
JSON file; after it, the same facts are collected again and :func:`diff_facts` names every field
that changed, ``before -> after``, and nothing else. The pytest glue is in ``snapshot_plugin``;
everything here works from a plain Python script too.

Most facts are *structural*: the model is built with every parameter on the meta device (see
:func:`pytest_zoo.building.structural_init`), so shapes, counts, head layers and output shapes at a
canonical input cost no weight memory. The one exception is the seeded fingerprint, which needs
real values: with ``torch.manual_seed(SEED)`` the model is built for real and every state_dict
tensor is summarised by its mean and standard deviation, plus the features that reach the head on
a seeded input. Seeded initialisation was bit-identical between torchvision 0.28.0/torch 2.13.0 and
0.29.1/torch 2.14.1, so the tolerances below only absorb float summation order (parameters, a
float32 reduction) and kernel choice (features, a float32 forward); a changed initialiser (another
distribution, gain or fan mode) moves a standard deviation by far more than either.

This module imports torch only inside :func:`collect_facts`, so reading, validating, diffing and
writing snapshot files is cheap.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import importlib.metadata
import inspect
import json
import math
import os
import platform
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .families import Family, find_family

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "FEATURE_TOLERANCE",
    "FORMAT",
    "FORMAT_VERSION",
    "PARAM_TOLERANCE",
    "SEED",
    "Change",
    "Facts",
    "Snapshot",
    "SnapshotFileError",
    "Tolerance",
    "canonical_inputs",
    "collect_facts",
    "current_header",
    "describe_header",
    "diff_facts",
    "dumps",
    "format_changes",
    "load_snapshot",
    "merge_snapshot",
    "snapshot_kwargs",
    "task_of",
    "write_snapshot",
]

#: Marks a file as ours; anything else with a ``.json`` name is refused rather than overwritten.
FORMAT = "pytest-zoo-snapshot"
FORMAT_VERSION = 1
#: The seed for the fingerprint build; the seeded input uses ``SEED + 1``.
SEED = 0

#: Facts is the JSON-able dict of one model; kept as ``Any`` because it nests freely.
Facts = dict[str, Any]


@dataclass(frozen=True)
class Tolerance:
    """How far a fingerprint summary may move before it counts as changed.

    Summaries are ``[mean, std]`` pairs. Both numbers are judged on the scale of the pair (the
    larger magnitude of the four numbers): a zero-mean tensor's mean is noise around zero, so only
    a shift that matters relative to its spread is a change. Two numbers match when
    ``|a - b| <= rel * scale + abs``; NaN matches only NaN (an all-constant tensor has std 0, and
    the scale then is its value, so a constant fill that changes is caught too).
    """

    rel: float
    abs: float

    def close(self, before: list[float], after: list[float]) -> bool:
        if len(before) != len(after):
            return False
        finite = [abs(x) for x in (*before, *after) if math.isfinite(x)]
        scale = max(finite, default=0.0)
        return all(
            a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= self.rel * scale + self.abs
            for a, b in zip(before, after, strict=True)
        )


#: Parameter summaries are float32 reductions (~1e-6 relative) of bit-identical values, stored to
#: 7 significant digits: 1e-4 of the scale leaves ample room for rounding and reduction order,
#: while a changed initialiser (distribution, gain, fan mode) moves the std by far more.
PARAM_TOLERANCE = Tolerance(rel=1e-4, abs=0.0)
#: Features come from a float32 forward whose kernels (oneDNN, MKL, thread count) may change with
#: torch itself; 1e-3 of the scale absorbs that and still catches a changed layer or activation.
FEATURE_TOLERANCE = Tolerance(rel=1e-3, abs=0.0)

_SIGNIFICANT_DIGITS = 7


class SnapshotFileError(Exception):
    """The snapshot file is missing, unreadable, corrupt, or not a pytest-zoo snapshot."""


@dataclass
class Snapshot:
    """A snapshot file's content: a header (reported, never compared) and one entry per model."""

    header: dict[str, str] = field(default_factory=dict)
    models: dict[str, Facts] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "header": self.header,
            "models": self.models,
        }


def current_header() -> dict[str, str]:
    """The versions a snapshot is recorded under, read from package metadata (no torch import)."""
    from . import __version__

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "torch": version("torch"),
        "torchvision": version("torchvision"),
        "pytest_zoo": __version__,
    }


def describe_header(header: Mapping[str, str]) -> str:
    keys = ("torchvision", "torch", "python")
    return ", ".join(f"{k} {header[k]}" for k in keys if k in header) or "no versions recorded"


# -- the file format -------------------------------------------------------------------------


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _dump(value: Any, indent: int) -> str:
    """Sorted keys, one key per line, lists of scalars on one line: stable, and diffs stay local."""
    pad = "  " * (indent + 1)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [f"{pad}{json.dumps(str(k))}: {_dump(value[k], indent + 1)}" for k in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, list | tuple):
        if all(_is_scalar(item) for item in value):
            return json.dumps(list(value), allow_nan=False)
        items = [f"{pad}{_dump(item, indent + 1)}" for item in value]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    return json.dumps(value, allow_nan=False)


def dumps(snapshot: Snapshot) -> str:
    """The file's text. Non-finite floats are stored as strings, so the file stays strict JSON."""
    return _dump(_plain(snapshot.to_json()), 0) + "\n"


def load_snapshot(path: Path) -> Snapshot:
    """Read and validate a snapshot file; every problem is a :class:`SnapshotFileError` saying what to do."""
    if path.is_dir():
        raise SnapshotFileError(
            f"zoo snapshot {path} is a directory. Give a file path, "
            f"e.g. --zoo-snapshot={path / 'zoo-snapshot.json'}"
        )
    if not path.exists():
        raise SnapshotFileError(
            f"zoo snapshot {path} does not exist. Record it first with: "
            f"pytest --zoo-snapshot={path} --zoo-snapshot-update"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotFileError(f"zoo snapshot {path} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotFileError(
            f"zoo snapshot {path} is corrupt: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            "Restore it from version control, or delete it and record a new one with --zoo-snapshot-update."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        if not isinstance(data, dict):
            found = f"a JSON {type(data).__name__}"
        else:
            found = f'"format": {data["format"]!r}' if "format" in data else 'no "format" key'
        raise SnapshotFileError(
            f'{path} is not a pytest-zoo snapshot (expected "format": "{FORMAT}", found {found}). '
            "It was left untouched; point --zoo-snapshot at another path."
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SnapshotFileError(
            f"zoo snapshot {path} has format_version {version!r}; this pytest-zoo reads up to "
            f"{FORMAT_VERSION}. Upgrade pytest-zoo, or record a new snapshot."
        )
    header, models = data.get("header", {}), data.get("models")
    if not isinstance(header, dict) or not isinstance(models, dict):
        raise SnapshotFileError(
            f"zoo snapshot {path} is corrupt: 'header' and 'models' must be objects. "
            "Restore it from version control, or record a new one with --zoo-snapshot-update."
        )
    bad = sorted(name for name, facts in models.items() if not isinstance(facts, dict))
    if bad:
        raise SnapshotFileError(f"zoo snapshot {path} is corrupt: the entries for {bad} are not objects.")
    return Snapshot(header={str(k): str(v) for k, v in header.items()}, models=models)


def write_snapshot(path: Path, snapshot: Snapshot) -> bool:
    """Write atomically (temporary file in the same directory, then rename); ``False`` if unchanged.

    A reader (or a crash) sees either the old file or the new one, never half of either. An
    unchanged snapshot is not rewritten, so its modification time says when it last changed.
    """
    text = dumps(snapshot)
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return False
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:  # mkstemp makes 0600 files; a new snapshot gets the permissions any new file would get
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def merge_snapshot(
    old: Snapshot | None, recorded: Mapping[str, Facts], removed: set[str], header: dict[str, str]
) -> Snapshot:
    """The old entries, with ``recorded`` ones replaced or added and ``removed`` ones dropped.

    Entries this run did not touch (models outside ``--zoo-models``, deselected by ``-k``) stay
    exactly as they were; ``removed`` must hold only models torchvision no longer has.
    """
    models = dict(old.models) if old is not None else {}
    models.update(recorded)
    for name in removed:
        models.pop(name, None)
    return Snapshot(header=dict(header), models=dict(sorted(models.items())))


# -- comparison ------------------------------------------------------------------------------

_MISSING: Any = object()


@dataclass(frozen=True)
class Change:
    """One field that differs: its path in the facts, and the values before and after."""

    path: tuple[str, ...]
    before: Any
    after: Any

    @property
    def where(self) -> str:
        parts = [self.path[0]]
        parts += [f"[{p}]" if "." in p or not p.isidentifier() else f".{p}" for p in self.path[1:]]
        return "".join(parts)

    def __str__(self) -> str:
        if self.before is _MISSING:
            return f"{self.where}: added {_show(self.after)}"
        if self.after is _MISSING:
            return f"{self.where}: removed (was {_show(self.before)})"
        return f"{self.where}: {_show(self.before)} -> {_show(self.after)}"


def _show(value: Any, limit: int = 120) -> str:
    text = json.dumps(_plain(value), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tolerance_for(path: tuple[str, ...]) -> Tolerance | None:
    if path[:2] == ("fingerprint", "params"):
        return PARAM_TOLERANCE
    if path == ("fingerprint", "features", "mean_std"):
        return FEATURE_TOLERANCE
    return None


def _summaries_close(before: Any, after: Any, tolerance: Tolerance) -> bool:
    try:
        return tolerance.close([float(x) for x in before], [float(x) for x in after])
    except (TypeError, ValueError):  # not a pair of numbers after all: compare exactly
        return bool(before == after)


def diff_facts(
    before: Mapping[str, Any], after: Mapping[str, Any], _path: tuple[str, ...] = ()
) -> list[Change]:
    """Every leaf that differs between two facts dicts, in sorted path order.

    Lists are leaves (shapes, summaries); fingerprint numbers compare within their tolerance.
    """
    changes: list[Change] = []
    for key in sorted(set(before) | set(after)):
        path = (*_path, key)
        a, b = before.get(key, _MISSING), after.get(key, _MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += diff_facts(a, b, path)
        elif a is _MISSING or b is _MISSING:
            changes.append(Change(path, a, b))
        else:
            tolerance = _tolerance_for(path)
            same = _summaries_close(a, b, tolerance) if tolerance is not None else a == b
            if not same:
                changes.append(Change(path, a, b))
    return changes


def format_changes(name: str, changes: list[Change], limit: int = 30) -> str:
    """A readable report: one ``field: before -> after`` line per change, with a per-field tally."""
    tally: dict[str, int] = {}
    for change in changes:
        tally[change.path[0]] = tally.get(change.path[0], 0) + 1
    fields = ", ".join(f"{k} ({n})" for k, n in sorted(tally.items()))
    lines = [f"zoo snapshot: {name} changed in {len(changes)} field(s): {fields}"]
    lines += [f"  {change}" for change in changes[:limit]]
    if len(changes) > limit:
        lines.append(f"  ... and {len(changes) - limit} more")
    return "\n".join(lines)


# -- collecting facts ------------------------------------------------------------------------

_TASKS = ("detection", "segmentation", "video", "optical_flow", "quantization")


def _plain(value: Any) -> Any:
    """A JSON-able, address-free rendering of a default, meta value or attribute."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, functools.partial):
        args = [_plain(a) for a in value.args] + [
            f"{k}={_plain(v)}" for k, v in sorted(value.keywords.items())
        ]
        return f"partial({_plain(value.func)}, {', '.join(map(str, args))})"
    if isinstance(value, type) or inspect.isroutine(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _family_row(name: str) -> Family | None:
    """The family row of ``name``; quantized builders share their float architecture's geometry."""
    return find_family(name) or (
        find_family(name.removeprefix("quantized_")) if name.startswith("quantized_") else None
    )


def task_of(name: str) -> str:
    """The task, as torchvision files the builder: the ``torchvision.models`` subpackage it lives in."""
    from torchvision.models import get_model_builder

    module: list[str] = str(get_model_builder(name).__module__).split(".")
    if module[:2] == ["torchvision", "models"] and len(module) > 3 and module[2] in _TASKS:
        return module[2]
    return "classification"


def snapshot_kwargs(name: str) -> dict[str, Any]:
    """The kit's offline build kwargs, plus ``weights_backbone=None`` where the builder has it.

    ``weights=None`` alone still downloads ImageNet backbones for detection and segmentation.
    """
    from torchvision.models import get_model_builder

    from .building import builder_kwargs

    kwargs = builder_kwargs(name)
    if "weights_backbone" in inspect.signature(get_model_builder(name)).parameters:
        kwargs.setdefault("weights_backbone", None)
    return kwargs


_MIN_SIDE = 32


def canonical_inputs(name: str, task: str) -> list[tuple[int, ...]] | None:
    """The input shapes whose outputs are recorded; ``None`` where outputs depend on the data.

    Image classifiers get the smallest legal square of at least 32 (or their fixed size), so the
    seeded forward stays cheap (five stride-2 stages still leave a 1x1 feature map); video gets
    16x224x224 (MViT's fixed size, and S3D's final 7x7 pool).
    """
    if task == "detection":
        return None
    if task == "segmentation":
        return [(1, 3, 64, 64)]
    if task == "video":
        return [(1, 3, 16, 224, 224)]
    if task == "optical_flow":
        return [(1, 3, 128, 128), (1, 3, 128, 128)]
    family = _family_row(name)
    if family is None:
        return [(1, 3, _MIN_SIDE, _MIN_SIDE)]
    low, _ = family.inputs.sizes()
    multiple = family.inputs.multiple
    side = low if family.inputs.fixed is not None else max(low, -(-_MIN_SIDE // multiple) * multiple)
    return [(1, 3, side, side)]


def _signature_defaults(func: Any) -> dict[str, Any]:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return {}
    facts: dict[str, Any] = {}
    for p in parameters:
        if p.name == "self":
            continue
        if p.kind is p.VAR_KEYWORD:
            facts[f"**{p.name}"] = "variadic"
        elif p.kind is p.VAR_POSITIONAL:
            facts[f"*{p.name}"] = "variadic"
        else:
            facts[p.name] = "<required>" if p.default is p.empty else _plain(p.default)
    return facts


def _layer_facts(module: nn.Module) -> dict[str, Any]:
    facts: dict[str, Any] = {"type": type(module).__qualname__}
    for attr in ("in_features", "out_features", "in_channels", "out_channels", "kernel_size"):
        if hasattr(module, attr):
            facts[attr] = _plain(getattr(module, attr))
    facts["bias"] = getattr(module, "bias", None) is not None
    return facts


def _flatten_outputs(output: object, prefix: str = "") -> dict[str, list[int]]:
    import torch

    if isinstance(output, torch.Tensor):
        return {prefix or "out": list(output.shape)}
    items: Iterator[tuple[str, object]]
    if isinstance(output, tuple) and hasattr(output, "_asdict"):
        items = iter(output._asdict().items())
    elif isinstance(output, Mapping):
        items = ((str(k), v) for k, v in output.items())
    elif isinstance(output, list | tuple):
        items = ((str(i), v) for i, v in enumerate(output))
    else:
        return {prefix or "out": [f"<{type(output).__qualname__}>"]}  # type: ignore[list-item]
    flat: dict[str, list[int]] = {}
    for key, value in items:
        flat.update(_flatten_outputs(value, f"{prefix}.{key}" if prefix else key))
    return flat


def _weights_facts(name: str) -> dict[str, Any]:
    """Every weights enum member's metadata, as far as an upgrade can change it; nothing is downloaded."""
    from torchvision.models import get_model_weights

    try:
        weights_enum = get_model_weights(name)
    except Exception:  # builders without a ``weights`` parameter (user-registered) have none
        return {}
    facts: dict[str, Any] = {}
    for member in weights_enum:
        meta = member.meta
        entry: dict[str, Any] = {
            "url": PurePosixPath(urlparse(member.url).path).name,
            "num_params": meta.get("num_params"),
            "min_size": _plain(meta.get("min_size")),
            "metrics": _plain(meta.get("_metrics")),
            "ops": _plain(meta.get("_ops")),
            "file_size": _plain(meta.get("_file_size")),
        }
        for key in ("categories", "keypoint_names"):
            if key in meta:
                entry[key] = _digest_list(meta[key])
        for key in ("min_temporal_size", "backend", "unquantized"):
            if key in meta:
                entry[key] = _plain(meta[key])
        entry["transforms"] = _transforms_facts(member.transforms)
        facts[member.name] = entry
    default = getattr(weights_enum, "DEFAULT", None)
    if default is not None:
        facts["DEFAULT"] = default.name
    return facts


def _digest_list(values: Any) -> Any:
    if values is None:
        return None
    text = "\n".join(str(v) for v in values)
    return {"count": len(values), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _transforms_facts(factory: Any) -> dict[str, Any]:
    try:
        transform = factory()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    facts: dict[str, Any] = {"class": type(transform).__qualname__}
    for key, value in sorted(vars(transform).items()):
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, enum.Enum):
            facts[key] = value.value if isinstance(value.value, str) else value.name
        elif _is_scalar(value) or isinstance(value, list | tuple):
            facts[key] = _plain(value)
    return facts


def _round(value: float) -> float | str:
    return float(f"{value:.{_SIGNIFICANT_DIGITS}g}") if math.isfinite(value) else str(value)


def _summary(tensor: torch.Tensor) -> list[float | str]:
    import torch

    data = tensor.detach()
    if data.dtype not in (torch.float32, torch.float64):  # integer buffers, half precision
        data = data.to(torch.float32)
    # float32 reductions are pairwise, ~1e-6 relative: far inside the tolerance, and converting the
    # 600M parameters of the largest models to float64 first cost more than building them
    std, mean = torch.std_mean(data, correction=0)
    return [_round(float(mean)), _round(float(std))]


def _head_paths(model: nn.Module) -> list[str] | None:
    """The model's head layers per its adapter; ``None`` without an adapter or a replaceable head."""
    from .heads import find_adapter

    adapter = find_adapter(model)
    if adapter is None:
        return None
    try:
        return adapter.present_heads(model)
    except LookupError:  # an adapter that says "no class head" (optical flow) or a stale one
        return None


def _fingerprint(
    name: str, kwargs: dict[str, Any], inputs: list[tuple[int, ...]] | None, *, classifier: bool
) -> dict[str, Any]:
    """Seeded real build: mean/std of every state_dict tensor, and of the features entering the head.

    Features are taken for image classifiers only: their canonical input is small, while a real
    video or detection forward would cost more than all the rest of the facts together.
    """
    with _one_thread():
        return _seeded_summaries(name, kwargs, inputs, classifier=classifier)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the fingerprint on one intra-op thread, then restore the caller's setting.

    One thread makes every float reduction's order independent of the machine's core count, so a
    fingerprint recorded on a laptop compares cleanly on a CI runner; and for batch-1 forwards at
    32x32 extra threads only spin (measured: 10-30x the CPU time of one thread on 2 busy cores).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _seeded_summaries(
    name: str, kwargs: dict[str, Any], inputs: list[tuple[int, ...]] | None, *, classifier: bool
) -> dict[str, Any]:
    import torch

    from .building import build_model

    torch.manual_seed(SEED)
    model = build_model(name, device="cpu", **kwargs).eval()
    params = {key: _summary(t) for key, t in model.state_dict().items() if t.numel() and not t.is_quantized}
    facts: dict[str, Any] = {"seed": SEED, "params": params}
    head_paths = _head_paths(model)
    if classifier and head_paths and inputs is not None:
        head = model.get_submodule(head_paths[0])
        seen: list[torch.Tensor] = []
        handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            torch.manual_seed(SEED + 1)
            with torch.no_grad():
                model(torch.randn(*inputs[0]))
        finally:
            handle.remove()
        if seen:
            facts["features"] = {"shape": list(seen[0].shape), "mean_std": _summary(seen[0])}
    del model
    return facts


def collect_facts(name: str, *, fingerprint: bool = True) -> Facts:
    """Everything a torchvision upgrade could change about the model ``name``, as plain JSON data.

    Structural facts come from a meta-device build (no weight memory). ``fingerprint=False`` skips
    the one real, seeded build, which is where nearly all of the time goes for the large models.
    """
    import torch
    from torchvision.models import get_model_builder

    from .building import build_model
    from .heads import find_adapter

    task = task_of(name)
    kwargs = snapshot_kwargs(name)
    family = _family_row(name)
    model = build_model(name, structural=True, **kwargs).eval()
    adapter = find_adapter(model)
    head_paths = _head_paths(model)
    inputs = canonical_inputs(name, task)
    if inputs is None:
        outputs: Any = "not recorded: detection outputs depend on the image content"
    else:
        try:
            with torch.no_grad():
                outputs = _flatten_outputs(model(*(torch.empty(shape, device="meta") for shape in inputs)))
        except Exception as exc:  # a model that cannot run its canonical input is a fact worth keeping
            outputs = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    cls = type(model)
    facts: Facts = {
        "task": task,
        "family": family.name if family is not None else None,
        "adapter": adapter.source if adapter is not None else None,
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "build_kwargs": _plain(kwargs),
        "builder_defaults": _signature_defaults(get_model_builder(name)),
        "class_defaults": _signature_defaults(cls.__init__),
        "num_params": sum(p.numel() for p in model.parameters()),
        "state_dict": {key: list(t.shape) for key, t in model.state_dict().items()},
        "heads": (
            {path: _layer_facts(model.get_submodule(path)) for path in head_paths}
            if head_paths is not None
            else None
        ),
        "inputs": [list(shape) for shape in inputs] if inputs is not None else None,
        "outputs": outputs,
        "weights": _weights_facts(name),
    }
    del model
    if fingerprint:
        classifier = task in ("classification", "quantization")
        facts["fingerprint"] = _fingerprint(name, kwargs, inputs, classifier=classifier)
    result: Facts = _plain(facts)
    return result
