"""Real loading, offline: a checkpoint fabricated under the file name torch.hub expects, loaded by the
builder inside a network guard, and checked (:func:`check_loading`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from ..compat import mappable
from ..models.building import poisoned_init, small_calibration, zero_init
from ..models.cache import active_cache
from ..models.deferred import overwritten_fills_skipped
from .cases import MetadataMismatch, WeightsCase
from .interception import reference_inputs
from .serving import KeptCheckpoint, write_fabricated

# -- real loading, offline ------------------------------------------------------------------------


def checkpoint_path(weights: Any, torch_home: Path) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` looks for ``weights`` before downloading."""
    return torch_home / "hub" / "checkpoints" / os.path.basename(str(weights.url))


def fabricate_checkpoint(
    case: WeightsCase, torch_home: Path, *, kept: KeptCheckpoint | None = None, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """Write a checkpoint for ``case`` under the file name torch.hub expects; return its contents.

    The same file a gate is served (:func:`~pytest_zoo.weights.serving.write_fabricated`): exactly
    the keys, shapes and dtypes the builder will load, quantized ones included, with deterministic
    values no initialiser produces, written atomically (or moved there from ``kept``, where the
    previous check left the same state).
    """
    return write_fabricated(case, checkpoint_path(case.weights, torch_home), kept=kept, **kwargs)


def load_pretrained_offline(case: WeightsCase, torch_home: Path, **kwargs: Any) -> nn.Module:
    """Call the builder with ``weights=W`` for real, under the network guard, in ``torch_home``.

    The checkpoint must already be in ``torch_home`` (see :func:`fabricate_checkpoint`); any attempt
    to download raises :class:`~pytest_zoo.netguard.NetworkAccessError` naming the URL.
    """
    return _load_offline(case, torch_home, **kwargs)[0]


def _load_offline(case: WeightsCase, torch_home: Path, **kwargs: Any) -> tuple[nn.Module, Mapping[str, Any]]:
    """:func:`load_pretrained_offline`, and the checkpoint as the builder read it from the file.

    The builder's random initialisation is poisoned (NaN) rather than drawn, and each NaN fill is
    held until something reads the tensor (:func:`~pytest_zoo.models.deferred.overwritten_fills_skipped`):
    the load's copy replaces it unread, and whatever the load would not overwrite is NaN at the end
    of the build instead of passing for loaded.
    The checkpoint is memory-mapped, so the model and the file's pages are the only model-sized
    memory: no read copy of the file sits beside them.
    """
    from ..conformance.converted import calibration_side
    from ..guards.network import network_guard

    expected = checkpoint_path(case.weights, torch_home)
    read: list[tuple[str, object]] = []
    original_load = torch.load

    def load(f: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(f, (str, os.PathLike)):
            kw.setdefault("mmap", True)
            f = mappable(f)
        loaded = original_load(f, *args, **kw)
        read.append((os.fspath(f) if isinstance(f, (str, os.PathLike)) else repr(f), loaded))
        return loaded

    quantized = case.task == "quantized"
    with (
        network_guard(torch_home=torch_home) as guard,
        mock.patch.object(torch, "load", load),
        # A quantized builder calibrates before it loads: torch 2.1 and 2.5 assert on NaN ranges.
        # The checkpoint overwrites the ranges it calibrates, so a small image does as well.
        zero_init() if quantized else poisoned_init(),
        small_calibration(calibration_side(case.model)) if quantized else contextlib.nullcontext(),
        overwritten_fills_skipped(),
    ):
        model = case.builder(weights=case.weights, **kwargs)
    if guard.attempts:
        raise MetadataMismatch(f"{case.label}: loading tried the network: {guard.attempts}")
    checkpoint = next(
        (value for path, value in read if os.path.exists(path) and os.path.samefile(path, expected)), None
    )
    if not isinstance(checkpoint, Mapping):
        raise MetadataMismatch(
            f"{case.label}: the builder did not read the checkpoint at {expected} (files read: "
            f"{[path for path, _ in read]}). Does it load weights from somewhere other than torch.hub's "
            "cache?"
        )
    return model, checkpoint


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal, where NaN equals NaN (a checkpoint may hold NaN layers on purpose).

    ``torch.equal`` answers for every tensor without NaN, at a tenth of the cost of masking NaN
    on both sides; only a tensor it calls unequal is looked at again.
    """
    if torch.equal(a, b):
        return True
    if a.is_floating_point() and b.is_floating_point() and a.shape == b.shape:
        return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()))
    return False


def check_loading(case: WeightsCase, torch_home: Path, num_classes: int) -> str:
    """Load pretrained for real, offline, then swap the head and freeze the backbone.

    A checkpoint is fabricated into ``torch_home`` under the file name torch.hub expects; the
    builder is called with ``weights=W`` inside the network guard; every tensor of the loaded model
    must equal the fabricated one (so the file really was read). Then ``replace_head`` and
    ``freeze_backbone`` must leave exactly the new head trainable, the total parameter count
    must be ``num_params`` with the old head's share swapped for the new one's, and no parameter
    or buffer may hold NaN or inf. Quantized weights
    are loaded with ``quantize=True`` (their only valid use); a quantized model has no trainable
    parameters, so for them the check ends with the load and an eval forward at the crop size.
    """
    kwargs: dict[str, Any] = {"quantize": True} if case.task == "quantized" else {}
    cache = active_cache()
    # The file the previous enum's check was done with lives as long as this model's cache group
    # (a previous model's goes here), and is held here while that group is released below.
    kept = cache.memo(_KEPT, KeptCheckpoint, group=case.model)
    # The session's cached build of this model is a third model-sized allocation beside the loaded
    # model and the checkpoint's pages; the plugin runs a model's weights checks after its
    # ZooConformance checks, so nothing is rebuilt for dropping it.
    cache.release()
    # The checkpoint is the check's own scratch file: a full run fabricates one per weights enum
    # (tens of GB over the zoo). A passed check leaves it to ``kept``, beside ``torch_home``; a
    # failed one deletes it.
    path = checkpoint_path(case.weights, torch_home)
    passed = False
    try:
        # Only the file is kept, not the fabricated tensors: the comparison is with what was read.
        fabricate_checkpoint(case, torch_home, kept=kept, **kwargs)
        result = _check_loaded(case, torch_home, num_classes, kwargs)
        passed = True
        return result
    finally:
        if passed:
            kept.keep(path, torch_home.parent)
        else:
            kept.discard()
            path.unlink(missing_ok=True)
        cache.memo(_KEPT, lambda: kept, group=case.model)


#: The model cache's key of the :class:`KeptCheckpoint` of the model whose loading is checked.
_KEPT = ("kept checkpoint",)


def _check_loaded(case: WeightsCase, torch_home: Path, num_classes: int, kwargs: dict[str, Any]) -> str:
    """:func:`check_loading` once the checkpoint is in place: load, compare, swap the head, freeze."""
    from ..models import freezing, heads

    model, fabricated = _load_offline(case, torch_home, **kwargs)
    loaded = model.state_dict()
    differing = [
        key
        for key, value in loaded.items()
        if isinstance(value, torch.Tensor)
        and not value.is_quantized
        and key in fabricated
        and not _identical(value, fabricated[key])
    ]
    # Quantized builders may convert after loading (MobileNetV3 loads QAT weights, then converts),
    # so for them only the tensors that survived unchanged in name are compared.
    unexpected = sorted(set(loaded) - set(fabricated)) if case.task != "quantized" else []
    if differing or unexpected:
        raise MetadataMismatch(
            f"{case.label}: the loaded model does not hold the fabricated checkpoint "
            f"{checkpoint_path(case.weights, torch_home)}: differing {differing[:5]}, "
            f"not in the checkpoint {unexpected[:5]}"
        )
    if case.task == "quantized":
        with torch.no_grad():
            out = model.eval()(torch.rand(reference_inputs(case)[0].shape))
        if tuple(out.shape) != (1, len(case.meta["categories"])):
            raise MetadataMismatch(f"{case.label}: quantized output shape {tuple(out.shape)}")
        return f"loaded {len(loaded)} tensors (quantized)"
    adapter = heads.find_adapter(model)
    if adapter is not None and adapter.no_head:
        return f"loaded {len(loaded)} tensors; the model has no class head to swap"
    old_head = sum(p.numel() for _, m in heads.head_modules(model) for p in m.parameters())
    heads.replace_head(model, num_classes)
    counts = freezing.freeze_backbone(model)
    new_head = sum(p.numel() for _, m in heads.head_modules(model) for p in m.parameters())
    expected_total = case.meta["num_params"] - old_head + new_head
    # A model with its own backbone module trains all the rest (decoder, RPN, ROI heads, new head).
    prefix = freezing.backbone_prefix(name for name, _ in model.named_parameters())
    trainable = (
        sum(p.numel() for name, p in model.named_parameters() if not name.startswith(prefix))
        if prefix is not None
        else new_head
    )
    if counts.trainable != trainable or counts.total != expected_total:
        raise MetadataMismatch(
            f"{case.label}, num_classes={num_classes}: after replace_head + freeze_backbone expected "
            f"{trainable:,} trainable / {expected_total:,} total, found {counts}"
        )
    # Partial weights can leave NaN layers that a swap of the last one does not replace (VGG16's
    # IMAGENET1K_FEATURES ships a NaN classifier): the fine-tuned model must hold finite values.
    from ..conformance.training import nonfinite_state

    finite = nonfinite_state(model)
    if not finite.ok:
        raise MetadataMismatch(f"{case.label}, after replace_head: " + "; ".join(finite.problems))
    return f"loaded {len(loaded)} tensors; {counts}"
