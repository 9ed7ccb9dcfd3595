"""The conformance suite that ``pytest --zoo-models=PATTERNS`` runs.

It is nothing but the default subclass of :class:`~pytest_zoo.ZooConformance`: torchvision's
builders and the kit's own adapters under every check. The plugin collects it directly, so it runs
whatever the user's ``python_files``/``python_classes`` settings are.
"""

from ..conformance.checks import ZooConformance
from ..weights import WeightsConformance


class TestZoo(ZooConformance):
    """Every selected torchvision builder, built offline with the kit's adapters."""

    # The kit builds from scratch (weights=None); test_load_pretrained covers torchvision's loading.
    test_pretrained_weights_reach_model = None  # type: ignore[assignment]


class TestZooWeights(WeightsConformance):
    """Every weights enum of the selected builders: metadata, transforms, and offline loading."""
