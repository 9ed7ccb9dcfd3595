"""The facts of one model: everything a torchvision upgrade could change about it, as plain JSON.

Most facts are *structural*: the model is built with every parameter on the meta device (see
:func:`pytest_zoo.models.building.structural_init`), so shapes, counts, head layers and output shapes at a
canonical input cost no weight memory. The one exception is the seeded fingerprint, which needs
real values: with ``torch.manual_seed(SEED)`` the model is built for real and every state_dict
tensor is summarised by the statistics of :mod:`.stats` (size, mean, std, kurtosis, fraction of
zeros, extremes), plus the mean and std of the features that reach the head on a seeded input.
torch may draw the same initialiser differently in another release, so the comparison
(:mod:`.diff`) judges each tensor as a sample of its initialiser, with tolerances from its size.

This module imports torch only inside :func:`collect_facts`.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import inspect
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..zoo.families import Family, find_family, task_of
from .file import Facts, is_scalar, plain
from .stats import summarise

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["SEED", "canonical_inputs", "collect_facts", "collect_fingerprint"]

#: The seed for the fingerprint build; the seeded input uses ``SEED + 1``.
SEED = 0


def _family_row(name: str) -> Family | None:
    """The family row of ``name``; quantized builders share their float architecture's geometry."""
    return find_family(name) or (
        find_family(name.removeprefix("quantized_")) if name.startswith("quantized_") else None
    )


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
            facts[p.name] = "<required>" if p.default is p.empty else plain(p.default)
    return facts


def _layer_facts(module: nn.Module) -> dict[str, Any]:
    facts: dict[str, Any] = {"type": type(module).__qualname__}
    for attr in ("in_features", "out_features", "in_channels", "out_channels", "kernel_size"):
        if hasattr(module, attr):
            facts[attr] = plain(getattr(module, attr))
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
            "min_size": plain(meta.get("min_size")),
            "metrics": plain(meta.get("_metrics")),
            "ops": plain(meta.get("_ops")),
            "file_size": plain(meta.get("_file_size")),
        }
        for key in ("categories", "keypoint_names"):
            if key in meta:
                entry[key] = _digest_list(meta[key])
        for key in ("min_temporal_size", "backend", "unquantized"):
            if key in meta:
                entry[key] = plain(meta[key])
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
        elif is_scalar(value) or isinstance(value, list | tuple):
            facts[key] = plain(value)
    return facts


def _head_paths(model: nn.Module) -> list[str] | None:
    """The model's head layers per its adapter; ``None`` without an adapter or a replaceable head."""
    from ..models.heads import find_adapter

    adapter = find_adapter(model)
    if adapter is None:
        return None
    try:
        return adapter.present_heads(model)
    except LookupError:  # an adapter that says "no class head" (optical flow) or a stale one
        return None


def _fingerprint(
    name: str, kwargs: dict[str, Any], inputs: list[tuple[int, ...]] | None, *, classifier: bool, seed: int
) -> dict[str, Any]:
    """Seeded real build: the statistics of every state_dict tensor, mean/std of the head's features.

    Features are taken for image classifiers only: their canonical input is small, while a real
    video or detection forward would cost more than all the rest of the facts together.
    """
    with _one_thread():
        return _seeded_summaries(name, kwargs, inputs, classifier=classifier, seed=seed)


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
    name: str, kwargs: dict[str, Any], inputs: list[tuple[int, ...]] | None, *, classifier: bool, seed: int
) -> dict[str, Any]:
    import torch

    from ..models.building import build_model

    torch.manual_seed(seed)
    model = build_model(name, device="cpu", **kwargs).eval()
    params = {key: summarise(t) for key, t in model.state_dict().items() if t.numel() and not t.is_quantized}
    facts: dict[str, Any] = {"seed": seed, "params": params}
    head_paths = _head_paths(model)
    if classifier and head_paths and inputs is not None:
        head = model.get_submodule(head_paths[0])
        seen: list[torch.Tensor] = []
        handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            torch.manual_seed(seed + 1)
            with torch.no_grad():
                model(torch.randn(*inputs[0]))
        finally:
            handle.remove()
        if seen:
            facts["features"] = {"shape": list(seen[0].shape), "mean_std": summarise(seen[0])[:2]}
    del model
    return facts


def collect_fingerprint(name: str, *, seed: int = SEED) -> Facts:
    """The ``fingerprint`` facts of ``name`` alone: one real build, seeded with ``seed``.

    A snapshot is always recorded with :data:`SEED`; other seeds exist to measure that a redraw
    of every initialiser passes the comparison (``benchmarks/seed_sweep.py``).
    """
    task = task_of(name)
    from ..models.building import builder_kwargs

    classifier = task in ("classification", "quantized")
    facts = _fingerprint(
        name, builder_kwargs(name), canonical_inputs(name, task), classifier=classifier, seed=seed
    )
    result: Facts = plain(facts)
    return result


def collect_facts(name: str, *, fingerprint: bool = True) -> Facts:
    """Everything a torchvision upgrade could change about the model ``name``, as plain JSON data.

    Structural facts come from a meta-device build (no weight memory). ``fingerprint=False`` skips
    the one real, seeded build, which is where nearly all of the time goes for the large models.
    """
    import torch
    from torchvision.models import get_model_builder

    from ..models.building import build_model, builder_kwargs
    from ..models.heads import find_adapter

    task = task_of(name)
    kwargs = builder_kwargs(name)
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
        "build_kwargs": plain(kwargs),
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
        classifier = task in ("classification", "quantized")
        facts["fingerprint"] = _fingerprint(name, kwargs, inputs, classifier=classifier, seed=SEED)
    result: Facts = plain(facts)
    return result
