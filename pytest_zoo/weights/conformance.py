"""The conformance class: one test per metadata check of every weights enum of the selected models."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..atomic import scratch_dir
from ..models.meta import require_values
from .cases import MetadataMismatch, WeightsCase, declared_exception, resolve_weights_id
from .checks import (
    NotApplicable,
    check_categories,
    check_file_size,
    check_metrics,
    check_min_size,
    check_num_params,
    check_ops,
    check_recipe,
    check_schema,
    check_transformed,
)
from .loading import check_loading

if TYPE_CHECKING:
    from hypothesis import settings


class WeightsConformance:
    """Metadata checks for every weights enum of the selected models, one test per check.

    pytest-zoo parametrizes ``zoo_weights`` with ids like ``resnet50-IMAGENET1K_V2``, so a single
    check of a single enum is selectable: ``-k 'test_num_params and resnet50-IMAGENET1K_V2'``.
    A check that meets a :data:`DECLARED_EXCEPTIONS` entry is reported as xfailed with its reason.
    """

    #: fnmatch patterns of the builder names whose weights this class checks.
    models: ClassVar[Iterable[str]] = ("*",)

    def _run(self, zoo_weights: str, check: str, function: Callable[[WeightsCase], object]) -> None:
        import pytest

        case = resolve_weights_id(zoo_weights)
        exception = declared_exception(case.weights, check)
        try:
            function(case)
        except NotApplicable as exc:
            pytest.skip(str(exc))
        except MetadataMismatch as exc:
            if exception is None:
                raise
            pytest.xfail(f"declared exception ({exception.reason}): {exc}")
        if exception is not None:
            pytest.fail(
                f"{case.label}: the declared exception for {check!r} no longer applies (the check "
                f"passes); delete it from pytest_zoo.weights.DECLARED_EXCEPTIONS. It said: {exception.reason}"
            )

    def test_schema(self, zoo_weights: str) -> None:
        """Only torchvision's permitted meta keys; the task's required keys and metrics present."""
        self._run(zoo_weights, "schema", check_schema)

    def test_categories(self, zoo_weights: str) -> None:
        """One unique name per output of the model the builder makes with these weights."""
        self._run(zoo_weights, "categories", check_categories)

    def test_num_params(self, zoo_weights: str) -> None:
        """``num_params`` is the parameter count of ``builder(weights=W)``, built on the meta device."""
        self._run(zoo_weights, "num_params", check_num_params)

    def test_ops(self, zoo_weights: str) -> None:
        """``_ops`` is FlopCounterMode's GFLOPs at the transforms' output size."""
        self._run(zoo_weights, "ops", check_ops)

    def test_file_size(self, zoo_weights: str) -> None:
        """``_file_size`` fits the checkpoint the builder loads."""
        self._run(zoo_weights, "file_size", check_file_size)

    def test_metrics(self, zoo_weights: str) -> None:
        """``_metrics`` holds finite numbers, accuracies as percentages."""
        self._run(zoo_weights, "metrics", check_metrics)

    def test_recipe(self, zoo_weights: str) -> None:
        """``recipe`` is an http(s) URL."""
        self._run(zoo_weights, "recipe", check_recipe)

    def test_min_size(self, zoo_weights: str) -> None:
        """A forward pass at ``min_size`` works."""
        self._run(zoo_weights, "min_size", check_min_size)

    def test_transforms(self, zoo_weights: str, zoo_hypothesis_settings: settings) -> None:
        """``transforms()`` on drawn PIL and uint8 images of any size gives the documented tensor."""
        from hypothesis import given
        from hypothesis import strategies as st

        case = resolve_weights_id(zoo_weights)
        video = case.task == "video"
        colors = st.tuples(*[st.integers(0, 255)] * 3)
        sides = st.integers(8, 96)  # aspect ratios up to 12:1; 1 px sides would upscale 500-fold

        @zoo_hypothesis_settings
        @given(color=colors, height=sides, width=sides, pil=st.booleans() if not video else st.just(False))
        def check(color: tuple[int, int, int], height: int, width: int, pil: bool) -> None:
            frames = 2 if video else 0
            pixels = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1).expand(3, height, width)
            image: Any = pixels.contiguous()
            if video:
                image = image.unsqueeze(0).expand(frames, 3, height, width).contiguous()
            elif pil:
                from PIL import Image

                image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())
            check_transformed(case, image, color, height, width, frames)

        self._run(zoo_weights, "transforms", lambda _: check())

    def test_load_pretrained(self, zoo_weights: str, zoo_device: torch.device) -> None:
        """builder(weights=W) loads a fabricated checkpoint offline; then head swap and freeze work."""
        require_values(zoo_device, "loading a checkpoint and comparing what was read")

        def check(case: WeightsCase) -> str:
            # The checkpoint is written, read once and deleted: scratch storage, not pytest's tmp_path.
            size = 4 * int(case.meta.get("num_params", 0))
            with tempfile.TemporaryDirectory(
                prefix="pytest-zoo-load-", dir=scratch_dir(size), ignore_cleanup_errors=True
            ) as home:
                return check_loading(case, Path(home), 7)

        self._run(zoo_weights, "load_pretrained", check)
