"""What each task feeds its models and what it gets back, so that one set of checks covers the zoo.

A classifier takes ``(B, 3, H, W)`` and returns ``(B, n)``; a detector takes a list of images (and,
in train mode, a list of targets) and returns one dict per image or a dict of losses; a segmenter
returns ``{"out": (B, n, H, W), "aux": ...}``; a video model takes ``(B, 3, T, H, W)``; RAFT takes
two images and returns a list of flows. :class:`TaskIO` captures exactly those differences: how to
draw an example, how to build the model's arguments from it, how to judge the output, and which
scalar to backpropagate. The checks in :mod:`pytest_zoo.checks` are written once against it.

Everything is drawn from Hypothesis strategies and seeded by a drawn integer, so a failing
example (images, boxes, masks and keypoints included) replays exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from hypothesis import strategies as st
from torch import nn

from ..zoo.families import InputSpec, task_of
from .strategies import MAX_BATCH, MAX_CLASSES, fitted_spec, input_sizes, min_train_batch

__all__ = [
    "Example",
    "OutputReport",
    "TaskIO",
    "fit_example",
    "named_outputs",
    "task_io",
]


def named_outputs(output: object) -> dict[str, torch.Tensor]:
    """Name every class-score tensor a classifier returns: a tensor, a named tuple of them, or a dict."""
    if isinstance(output, torch.Tensor):
        return {"logits": output}
    if isinstance(output, tuple) and hasattr(output, "_asdict"):
        return {k: v for k, v in output._asdict().items() if isinstance(v, torch.Tensor)}
    if isinstance(output, Mapping):
        return {str(k): v for k, v in output.items() if isinstance(v, torch.Tensor)}
    raise TypeError(f"cannot interpret a model output of type {type(output).__qualname__}")


@dataclass(frozen=True)
class Example:
    """One drawn input: batch size, spatial size, clip length (video only) and the seed of its values."""

    batch: int
    size: tuple[int, int]
    frames: int | None = None
    seed: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """The input tensor's shape: ``(B, 3, H, W)``, or ``(B, 3, T, H, W)`` for a clip."""
        if self.frames is None:
            return (self.batch, 3, *self.size)
        return (self.batch, 3, self.frames, *self.size)

    def image_sizes(self) -> list[tuple[int, int]]:
        """Per-image sizes for list-of-images inputs: every other image is 8 pixels taller.

        Detectors batch images of different sizes internally; a batch of equal sizes would never
        exercise that path.
        """
        h, w = self.size
        return [(h + 8 * (i % 2), w) for i in range(self.batch)]

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


def fit_example(example: Example, model: nn.Module, spec: InputSpec, *, train: bool) -> Example:
    """``example``, made legal for ``model`` (the model the hooks returned) in the mode the check runs.

    Examples are drawn before the hooks run, from the family's geometry and the model as built;
    the hooks may change what is legal. A new head with BatchNorm1d (fastai's ``add_head``) needs
    a train-mode batch of 2 or more on a family without BatchNorm (SqueezeNet); a model that
    records its build-time size (a ViT inside ``nn.Sequential(body, head)``) takes that size.
    Only what the returned model rules out changes: the batch grows, the size or clip length
    moves to the nearest legal one.
    """
    spec = fitted_spec(spec, model)
    batch = max(example.batch, min_train_batch(model)) if train else example.batch
    size = (spec.fixed, spec.fixed) if spec.fixed is not None else example.size
    frames = example.frames
    if spec.frames is not None:
        frames = min(max(frames or spec.frames[0], spec.frames[0]), spec.frames[1])
    if (batch, size, frames) == (example.batch, example.size, example.frames):
        return example
    return Example(batch, size, frames, example.seed)


@dataclass
class OutputReport:
    """The verdict on one output: comparable shapes, and any problem shapes cannot express."""

    found: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.found == self.expected


class TaskIO:
    """Classification: ``(B, 3, H, W)`` in, ``(B, n)`` out for every output (aux outputs included).

    Subclasses override what differs. ``has_head`` is False for tasks without a class head (optical
    flow); ``min_classes``/``max_classes`` bound the drawn class counts where a large count is either
    meaningless (a detector needs a background class) or only expensive (9 anchors x 10,000 classes).
    """

    task: ClassVar[str] = "classification"
    has_head: ClassVar[bool] = True
    min_classes: ClassVar[int] = 1
    max_classes: ClassVar[int] = MAX_CLASSES
    #: Whether every output is a class-score tensor (so the checks can explain a wrong one).
    class_scores: ClassVar[bool] = True

    def num_classes(self) -> st.SearchStrategy[int]:
        return st.integers(self.min_classes, self.max_classes)

    def examples(
        self, spec: InputSpec, model: nn.Module | None = None, *, train: bool = False
    ) -> st.SearchStrategy[Example]:
        """Legal examples for ``spec``: batch from 1 (2 in train mode with BatchNorm), sizes, frames, seed."""
        low = min_train_batch(model) if (train and model is not None) else 1
        high = max(low, spec.max_batch or MAX_BATCH)
        frames = st.none() if spec.frames is None else st.integers(*spec.frames)
        return st.builds(
            Example,
            batch=st.integers(low, high),
            size=input_sizes(spec, train=train),
            frames=frames,
            seed=st.integers(0, 2**16),
        )

    def inputs(
        self, model: nn.Module, example: Example, n: int, device: torch.device, *, train: bool
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments for ``model(...)``."""
        x = torch.randn(example.shape, generator=example.generator()).to(device)
        return (x,), {}

    def describe(self, example: Example) -> str:
        """How the failure message shows the input, e.g. ``torch.randn(2, 3, 32, 32)``."""
        return f"torch.randn{example.shape}"

    def check(self, output: object, example: Example, n: int, *, train: bool) -> OutputReport:
        outputs = named_outputs(output)
        return OutputReport(
            found={key: tuple(out.shape) for key, out in outputs.items()},
            expected={key: self.expected_shape(key, example, n) for key in outputs},
        )

    def expected_shape(self, key: str, example: Example, n: int) -> tuple[int, ...]:
        return (example.batch, n)

    def score(self, output: object) -> torch.Tensor:
        """The scalar whose backward pass must reach every class-dependent parameter."""
        return sum((out.float().sum() for out in named_outputs(output).values()), torch.zeros(()))


class VideoIO(TaskIO):
    """Video: ``(B, 3, T, H, W)`` clips in (T from the family's legal range), ``(B, n)`` out."""

    task = "video"


class QuantizedIO(TaskIO):
    """A ``quantized_*`` builder's float model is a classifier; the converted model is checked apart."""

    task = "quantized"


class SegmentationIO(TaskIO):
    """Segmentation: ``{"out": (B, n, H, W)}`` plus ``"aux"`` when the model has an aux classifier."""

    task = "segmentation"
    #: ``(B, n, H, W)`` logits cost B*n*H*W floats twice (out and aux): bounded, still far above VOC's 21.
    max_classes = 1_000

    def check(self, output: object, example: Example, n: int, *, train: bool) -> OutputReport:
        report = super().check(output, example, n, train=train)
        if not isinstance(output, Mapping) or "out" not in output:
            report.problems.append(
                f"a segmentation model returns a dict with 'out', got {type(output).__name__}"
            )
        return report

    def expected_shape(self, key: str, example: Example, n: int) -> tuple[int, ...]:
        return (example.batch, n, *example.size)


class DetectionIO(TaskIO):
    """Detection: a list of ``3xHxW`` images in; per image ``boxes``/``labels``/``scores`` out in eval
    mode, a dict of finite scalar losses in train mode (given generated targets).

    Targets have 1 to 3 boxes inside their image, labels in ``[1, n)`` (0 is the background class
    of the R-CNNs and SSD) and, when the model predicts them, masks and keypoints inside the boxes.
    """

    task = "detection"
    class_scores = False
    min_classes = 2  # __background__ and one class
    max_classes = 128  # RetinaNet's cls_logits has 9 * n channels of 3x3x256 weights

    def inputs(
        self, model: nn.Module, example: Example, n: int, device: torch.device, *, train: bool
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        g = example.generator()
        images = [torch.rand(3, h, w, generator=g).to(device) for h, w in example.image_sizes()]
        if not train:
            return (images,), {}
        keypoints = _keypoint_count(model)
        targets = [
            _target(g, h, w, n, masks=_predicts_masks(model), keypoints=keypoints, device=device)
            for h, w in example.image_sizes()
        ]
        return (images, targets), {}

    def describe(self, example: Example) -> str:
        sizes = ", ".join(f"3x{h}x{w}" for h, w in example.image_sizes())
        return f"[{sizes}] (images)"

    def check(self, output: object, example: Example, n: int, *, train: bool) -> OutputReport:
        if train:
            return _check_losses(output)
        report = OutputReport()
        if not isinstance(output, Sequence) or isinstance(output, str):
            report.problems.append(f"eval mode must return a list of dicts, got {type(output).__name__}")
            return report
        report.found["detections"] = len(output)
        report.expected["detections"] = example.batch
        for i, (result, (h, w)) in enumerate(zip(output, example.image_sizes(), strict=False)):
            _check_detections(report, f"[{i}]", result, n, h, w)
        return report

    def score(self, output: object) -> torch.Tensor:
        if not isinstance(output, Mapping):
            raise TypeError(f"a detector in train mode returns a dict of losses, got {type(output).__name__}")
        return sum((loss.float() for loss in output.values()), torch.zeros(()))


class OpticalFlowIO(TaskIO):
    """Optical flow (RAFT): two ``(B, 3, H, W)`` frames in, ``num_flow_updates`` flows ``(B, 2, H, W)`` out.

    There is no class head, so no class count: the checks verify flows instead of skipping the model.
    Two refinement updates keep the recurrent part cheap while still exercising it.
    """

    task = "optical_flow"
    has_head = False
    class_scores = False
    num_flow_updates: ClassVar[int] = 2

    def num_classes(self) -> st.SearchStrategy[int]:
        return st.just(0)

    def inputs(
        self, model: nn.Module, example: Example, n: int, device: torch.device, *, train: bool
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        g = example.generator()
        first = torch.rand(example.shape, generator=g)
        second = torch.rand(example.shape, generator=g)
        return (first.to(device), second.to(device)), {"num_flow_updates": self.num_flow_updates}

    def describe(self, example: Example) -> str:
        return f"two frames torch.rand{example.shape}, num_flow_updates={self.num_flow_updates}"

    def check(self, output: object, example: Example, n: int, *, train: bool) -> OutputReport:
        report = OutputReport()
        if not isinstance(output, Sequence) or not all(isinstance(f, torch.Tensor) for f in output):
            report.problems.append(f"RAFT returns a list of flow tensors, got {type(output).__name__}")
            return report
        report.found = {f"flow[{i}]": tuple(f.shape) for i, f in enumerate(output)}
        report.expected = {
            f"flow[{i}]": (example.batch, 2, *example.size) for i in range(self.num_flow_updates)
        }
        if not all(bool(torch.isfinite(f).all()) for f in output):
            report.problems.append("a flow contains NaN or inf")
        return report

    def score(self, output: object) -> torch.Tensor:
        assert isinstance(output, Sequence)
        return sum((flow.float().sum() for flow in output), torch.zeros(()))


_IO: dict[str, TaskIO] = {
    io.task: io
    for io in (TaskIO(), VideoIO(), QuantizedIO(), SegmentationIO(), DetectionIO(), OpticalFlowIO())
}


def task_io(name: str) -> TaskIO:
    """The input/output conventions of builder ``name``'s task (classification for unknown names)."""
    return _IO[task_of(name)]


# -- detection helpers -----------------------------------------------------------------------------


def _predicts_masks(model: nn.Module) -> bool:
    roi_heads = getattr(model, "roi_heads", None)
    return bool(roi_heads is not None and roi_heads.has_mask())


def _keypoint_count(model: nn.Module) -> int:
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is None or not roi_heads.has_keypoint():
        return 0
    return int(roi_heads.keypoint_predictor.kps_score_lowres.out_channels)


def _target(
    g: torch.Generator, h: int, w: int, n: int, *, masks: bool, keypoints: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """One image's ground truth: 1 to 3 boxes of at least 4x4 pixels inside it, and their masks/keypoints."""
    k = int(torch.randint(1, 4, (), generator=g))
    x1 = torch.rand(k, generator=g) * (w / 2)
    y1 = torch.rand(k, generator=g) * (h / 2)
    x2 = x1 + 4 + torch.rand(k, generator=g) * (w / 2 - 4)
    y2 = y1 + 4 + torch.rand(k, generator=g) * (h / 2 - 4)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    target = {"boxes": boxes, "labels": torch.randint(1, max(n, 2), (k,), generator=g)}
    if masks:
        mask = torch.zeros(k, h, w, dtype=torch.uint8)
        for i, (a, b, c, d) in enumerate(boxes.round().int().tolist()):
            mask[i, b:d, a:c] = 1
        target["masks"] = mask
    if keypoints:
        u = torch.rand(k, keypoints, generator=g)
        v = torch.rand(k, keypoints, generator=g)
        xs = boxes[:, None, 0] + u * (boxes[:, None, 2] - boxes[:, None, 0])
        ys = boxes[:, None, 1] + v * (boxes[:, None, 3] - boxes[:, None, 1])
        target["keypoints"] = torch.stack([xs, ys, torch.ones_like(xs)], dim=2)
    return {key: value.to(device) for key, value in target.items()}


def _check_losses(output: object) -> OutputReport:
    report = OutputReport()
    if not isinstance(output, Mapping) or not output:
        report.problems.append(f"train mode with targets must return a dict of losses, got {output!r:.80}")
        return report
    report.found = {f"loss {k}": tuple(v.shape) for k, v in output.items()}
    report.expected = {f"loss {k}": () for k in output}
    bad = [k for k, v in output.items() if not bool(torch.isfinite(v).all())]
    if bad:
        report.problems.append(f"losses that are NaN or inf: {', '.join(bad)}")
    return report


def _check_detections(report: OutputReport, where: str, result: object, n: int, h: int, w: int) -> None:
    if not isinstance(result, Mapping) or not {"boxes", "labels", "scores"} <= result.keys():
        report.problems.append(f"{where} must be a dict with boxes, labels and scores, got {result!r:.80}")
        return
    boxes, labels, scores = result["boxes"], result["labels"], result["scores"]
    k = len(boxes)
    expected: dict[str, tuple[int, ...]] = {"boxes": (k, 4), "labels": (k,), "scores": (k,)}
    if "masks" in result:
        expected["masks"] = (k, 1, h, w)
    if "keypoints" in result:
        expected["keypoints"] = (k, result["keypoints"].shape[1] if k else 0, 3)
    for key, shape in expected.items():
        report.found[f"{where}.{key}"] = tuple(result[key].shape)
        report.expected[f"{where}.{key}"] = shape
    if labels.dtype != torch.int64:
        report.problems.append(f"{where}.labels have dtype {labels.dtype}, expected torch.int64")
    if k and not (int(labels.min()) >= 0 and int(labels.max()) < n):
        report.problems.append(
            f"{where}.labels range over [{int(labels.min())}, {int(labels.max())}], outside [0, {n}): "
            "the class head does not have num_classes outputs"
        )
    if k and not (
        bool(torch.isfinite(scores).all()) and float(scores.min()) >= 0 and float(scores.max()) <= 1
    ):
        report.problems.append(f"{where}.scores are not probabilities in [0, 1]")
    if k and not bool(torch.isfinite(boxes).all()):
        report.problems.append(f"{where}.boxes contain NaN or inf")
    elif k and (bool((boxes[:, 2:] < boxes[:, :2]).any()) or float(boxes.min()) < 0 or _beyond(boxes, h, w)):
        report.problems.append(f"{where}.boxes are not (x1, y1, x2, y2) inside the {h}x{w} image")


def _beyond(boxes: torch.Tensor, h: int, w: int) -> bool:
    eps = 1e-3 * max(h, w)
    return bool((boxes[:, 2] > w + eps).any() or (boxes[:, 3] > h + eps).any())
