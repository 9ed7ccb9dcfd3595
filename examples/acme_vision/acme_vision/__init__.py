"""acme-vision: a downstream project whose model-building code pytest-zoo gates in CI."""

from .models import AcmeNet, build_backbone, build_classifier, freeze, swap_head

__all__ = ["AcmeNet", "build_backbone", "build_classifier", "freeze", "swap_head"]
