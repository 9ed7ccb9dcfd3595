"""Weights metadata conformance: every weights enum of the selected models, checked offline.

Users pick preprocessing from ``weights.transforms()``, report ``num_params``/``_ops`` and label
outputs with ``meta["categories"]``; each of those is checked here against an oracle that does not
come from the metadata itself:

* the model the builder makes *with those weights* is obtained by calling the real builder with
  ``weights=W`` while the checkpoint read is short-circuited (:func:`build_with_weights`). The
  builder's own weight-dependent rules (``num_classes`` from the categories, GoogLeNet dropping its
  aux heads, ViT taking ``image_size`` from ``min_size``, the quantized ``backend``) therefore apply
  without being copied here, and the build is structural (meta device) so it costs nothing;
* GFLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors, at the input shape
  the weights' own transforms produce;
* the real loading path is exercised with a checkpoint fabricated from the model's own load-time
  ``state_dict`` and written where ``torch.hub`` looks for it, inside a network guard.

Known, documented deviations in torchvision's metadata live in :data:`DECLARED_EXCEPTIONS` (one
place); a check that hits one reports it as an expected failure, and fails if it has been fixed.

The package's modules: :mod:`.cases` (fields, declared exceptions, enumeration),
:mod:`.interception` (building with weights, probe shapes, GFLOPs), :mod:`.loading` (fabricated
checkpoints, offline loading), :mod:`.checks` (the metadata checks) and :mod:`.conformance`
(:class:`WeightsConformance`); this module re-exports their public names.
"""

from __future__ import annotations

from .cases import (
    DECLARED_EXCEPTIONS,
    FILE_SIZE_TOLERANCE,
    OPS_TOLERANCE,
    PERMITTED_FIELDS,
    PLACEHOLDER_CATEGORIES,
    TASK_FIELDS,
    DeclaredException,
    MetadataMismatch,
    WeightsCase,
    declared_exception,
    resolve_weights_id,
    weights_cases,
    weights_ids,
)
from .checks import (
    NotApplicable,
    built,
    check_categories,
    check_file_size,
    check_metrics,
    check_min_size,
    check_num_params,
    check_ops,
    check_recipe,
    check_schema,
    check_transformed,
    float_case,
)
from .conformance import WeightsConformance
from .interception import (
    WithWeights,
    build_with_weights,
    count_gflops,
    output_count,
    per_class_parameters,
    reference_inputs,
)
from .loading import check_loading, checkpoint_path, fabricate_checkpoint, load_pretrained_offline

__all__ = [
    "DECLARED_EXCEPTIONS",
    "FILE_SIZE_TOLERANCE",
    "OPS_TOLERANCE",
    "PERMITTED_FIELDS",
    "PLACEHOLDER_CATEGORIES",
    "TASK_FIELDS",
    "DeclaredException",
    "MetadataMismatch",
    "NotApplicable",
    "WeightsCase",
    "WeightsConformance",
    "WithWeights",
    "build_with_weights",
    "built",
    "check_categories",
    "check_file_size",
    "check_loading",
    "check_metrics",
    "check_min_size",
    "check_num_params",
    "check_ops",
    "check_recipe",
    "check_schema",
    "check_transformed",
    "checkpoint_path",
    "count_gflops",
    "declared_exception",
    "fabricate_checkpoint",
    "float_case",
    "load_pretrained_offline",
    "output_count",
    "per_class_parameters",
    "reference_inputs",
    "resolve_weights_id",
    "weights_cases",
    "weights_ids",
]
