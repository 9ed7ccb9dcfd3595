"""acme-vision: a downstream project whose model-building code pytest-zoo gates in CI."""

from .models import (
    AcmeNet,
    Classifier,
    build_backbone,
    build_classifier,
    freeze,
    freeze_body,
    swap_head,
    with_mlp_head,
)

__all__ = [
    "AcmeNet",
    "Classifier",
    "build_backbone",
    "build_classifier",
    "freeze",
    "freeze_body",
    "swap_head",
    "with_mlp_head",
]
