"""The conformance checks, as a class whose model-building steps are overridable hooks.

:class:`ZooConformance` is the single mechanism behind both the shipped suite (``pytest
--zoo-models=...`` collects a plain subclass of it) and users' own gates: a subclass overrides
``build_model``/``replace_head``/``freeze_backbone`` with their code and inherits every check.

A gate judges what the user's code must guarantee, never whether it matches how the kit would
have written it. So the reference is matched to the user's own as-built model
(:mod:`pytest_zoo.reference`): only the class-dependent part of the expected model comes from
torchvision's builder (or, for architectures of your own, from what ``replace_head`` does at two
class counts), everything else is the user's model as built. The model ``replace_head`` returns
is the model every check goes on with. The parameters that must train after
``freeze_backbone`` are the class-dependent ones, every parameter ``replace_head`` introduced
(a multi-layer head trains whole), whatever the class declares in :attr:`ZooConformance.trainable`,
and the backbone's normalisation parameters when :attr:`ZooConformance.norm_policy` says so.

Every failure is a :class:`ConformanceFailure` rendered by :mod:`pytest_zoo.failures`: model,
drawn inputs, the hook and where it is defined, expected vs found, the defect, how to reproduce.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from hypothesis import settings
from torch import nn

from ..models import building, freezing, heads
from ..models.cache import active_cache
from ..models.freezing import NormPolicy
from ..models.reference import class_dependent_parameters
from ..zoo.families import InputSpec
from . import deployment, factory, loadlog, oracle, pretrained, strategies, structural, values
from .failures import ConformanceFailure
from .task_io import named_outputs

__all__ = [
    "ConformanceFailure",
    "NormPolicy",
    "ZooConformance",
    "class_dependent_parameters",
    "named_outputs",
]


class ZooConformance:
    """Conformance checks for models built from the torchvision zoo.

    Subclass it in a test module named ``Test...``; pytest-zoo parametrizes every check by the
    selected model names (``models`` below, intersected with ``--zoo-models`` when given). To opt
    out of one check, set it to ``None`` in the subclass.
    """

    #: fnmatch patterns of the builder names this class checks; a plain name torchvision does not
    #: know is kept as given, for a ``build_model`` hook that builds a model of your own.
    models: ClassVar[Iterable[str]] = ("*",)
    #: Whether torchvision's builder (``num_classes=n``) is the reference for your models' heads.
    #: Names torchvision has no builder for always use the hook-derived reference; switch this off
    #: for networks of your own under torchvision names (another zoo's ``efficientnet_b0``).
    builder_oracle: ClassVar[bool] = True
    #: What your ``freeze_backbone`` does with the backbone's normalisation layers; the freeze
    #: checks verify exactly this (``NormPolicy(affine="trainable")`` for a ``train_bn`` recipe,
    #: ``NormPolicy(stats="frozen")`` for one whose running statistics must not move).
    norm_policy: ClassVar[NormPolicy] = NormPolicy()
    #: The submodule that is the backbone of a model that has one (torchvision's segmentation and
    #: detection models: ``backbone``): ``freeze_backbone`` freezes it and the rest (a decoder, the
    #: RPN and ROI heads) trains. A dotted path narrows it (``"backbone.body"``: the FPN trains too);
    #: ``None`` makes every model's backbone everything but its class-dependent layers.
    backbone_module: ClassVar[str | None] = freezing.BACKBONE
    #: Whether the head layers your ``replace_head`` installs have a bias. ``None``: as the builder's
    #: (a ``nn.Linear(old.in_features, n, bias=False)`` where the builder's head has a bias fails
    #: ``test_head_matches_builder``); ``False`` or ``True`` declares a recipe that drops or adds it.
    head_bias: ClassVar[bool | None] = None
    #: fnmatch patterns of parameter names (as the model ``replace_head`` returns spells them)
    #: that must train besides the head the kit sees, e.g. ``("layer4.*",)`` for a recipe that
    #: fine-tunes the last stage too. Override :meth:`must_train` for anything a pattern can't say.
    trainable: ClassVar[Sequence[str]] = ()
    #: The deployment paths :meth:`test_deployability` checks: any of ``"export"``, ``"compile"``,
    #: ``"script"``, ``"fx"``. Not set: the session's ``--zoo-deploy`` (none by default, the most
    #: expensive check); set, even to ``()``, it wins over the option for this class.
    deploy: ClassVar[Sequence[deployment.Method]] = ()
    #: Whether the build loads pretrained weights: :meth:`test_pretrained_weights_reach_model` then
    #: fails a build that requests none (a build that requests some is checked either way).
    pretrained: ClassVar[bool] = False
    #: fnmatch patterns of backbone parameters the recipe re-initialises after loading, on purpose.
    reinitialised: ClassVar[Sequence[str]] = ()
    #: A factory, ``create_model(self, name, num_classes)`` returning the ready model (built, loaded,
    #: frozen, head swapped), instead of the three hooks (see :mod:`.factory`).
    create_model: Callable[..., nn.Module] | None = None
    #: The zoo name of the model being checked, set before any hook runs, so hooks that need the
    #: architecture (a per-architecture cut point) need not tag the model.
    model_name: str = ""
    #: Whether the last ``replace_head`` swapped in place (returned ``None``): the reproduce lines say so.
    _swapped_in_place: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if vars(cls).get("create_model") is not None:
            factory.adopt_factory(cls)

    # -- hooks: override these with your own model-building code -------------------------------

    def build_model(self, name: str) -> nn.Module:
        """Build the model under test, with its original head."""
        return building.build_model(name)

    def replace_head(self, model: nn.Module, num_classes: int) -> nn.Module:
        """Swap the head for ``num_classes`` outputs and return the model to use from now on.

        In place or functional: the checks go on with the returned model (``None`` means the
        swap was in place), so ``nn.Sequential(body, new_head)`` reusing the body is fine.
        """
        return heads.replace_head(model, num_classes)

    def freeze_backbone(self, model: nn.Module) -> None:
        """Freeze the backbone (:attr:`backbone_module`), leaving what :attr:`norm_policy` says trainable."""
        policy = self.norm_policy
        freezing.freeze_backbone(
            model, norm_stats=policy.stats, norm_affine=policy.affine, backbone=self.backbone_module
        )

    def input_spec(self, name: str) -> InputSpec:
        """The input geometry ``name`` accepts: the family table's row, else any size from 1.

        Override it for an architecture of your own whose inputs are constrained (a fixed size, a
        multiple of a patch size); the checks draw every input from it. The default follows the
        model your ``build_model`` built: a ViT built at 224 gets 224x224 inputs.
        """
        return strategies.input_spec(name)

    def must_train(self, name: str, model: nn.Module, parameter: str) -> bool:
        """Whether ``parameter`` of ``model`` (as ``replace_head`` returned it) must train although
        the kit does not see it as head: by default, whether it matches :attr:`trainable`."""
        return any(fnmatch.fnmatchcase(parameter, pattern) for pattern in self.trainable)

    # -- plumbing ------------------------------------------------------------------------------

    def _model(self, name: str, device: torch.device) -> nn.Module:
        """The ``build_model`` hook's model for ``name``: built once per session, handed out as built.

        Every check of a model shares one build (see :mod:`pytest_zoo.cache`). On the meta device
        the hook runs under :func:`~pytest_zoo.building.structural_init`, so any hook, the default
        or a user's, builds structurally: no weight is allocated or initialised.
        """
        self.model_name = name

        def build() -> nn.Module:
            log = loadlog.LoadLog()  # what it reads and loads, for test_pretrained_weights_reach_model
            structural = building.structural_init() if device.type == "meta" else contextlib.nullcontext()
            with loadlog.recording(log, "build_model"), structural:
                return loadlog.remember_build(self.build_model(name).to(device), log)

        model = active_cache().get((type(self), name, str(device)), build, group=name)
        self._adopt_head(name, model)
        return model

    def _adopt_head(self, name: str, model: nn.Module) -> None:
        """The fallback for a class no adapter knows: infer its head, verify it, say so in the report.

        Only when a default hook needs an adapter (a user's own ``replace_head``/``freeze_backbone``
        need none). With the builder oracle, the inference is verified against torchvision's
        ``builder(num_classes=n)`` and a refuted one fails the check; every check that uses an
        inferred head emits a :class:`~pytest_zoo.inference.HeadInferredWarning`.
        """
        if self._kit_default("replace_head") or self._kit_default("freeze_backbone"):
            oracle.adopt_head(self, name, model)

    def _kit_default(self, attribute: str) -> bool:
        """Whether ``attribute`` is the kit's own: what it knows of its defaults holds for them alone."""
        return bool(getattr(type(self), attribute) is getattr(ZooConformance, attribute))

    def _train_shapes_checked_elsewhere(self, name: str, device: torch.device) -> bool:
        own = self._kit_default("test_gradients_reach_head_only")
        return own and structural.gradient_check_runs(type(self), name, device)

    def _spec(self, name: str, model: nn.Module) -> InputSpec:
        """The ``input_spec`` hook's geometry; the default one follows the model as built."""
        if self._kit_default("input_spec"):
            return strategies.input_spec(name, model)
        return self.input_spec(name)

    # -- checks: each body is a function of structural.py or values.py, given this gate ---------

    def test_head_matches_builder(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """After ``replace_head(model, n)`` every head layer has the reference's shapes at ``n``.

        A head layer the model keeps in the reference's form (``fc`` replaced by one Linear, an
        aux head left where it was) must match ``builder(num_classes=n)`` exactly, which catches
        an aux head left alone or a hard-coded ``in_features``. A head of your own design (several
        layers, a functional ``nn.Sequential(body, head)``) is judged by what it must do instead:
        something in it follows ``num_classes``. Without a builder (``builder_oracle = False``)
        the reference is derived from the hooks (see :func:`.oracle._derived_reference`).
        """
        structural.head_matches_builder(self, zoo_model_name, zoo_device, zoo_hypothesis_settings)

    def test_forward_shape(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """Outputs have the task's shape for ``num_classes`` in eval and train mode (aux outputs too).

        Classification and video: ``(batch, n)``; segmentation: ``(batch, n, H, W)`` for ``out`` and
        ``aux``; detection: one dict per image with ``labels`` in ``[0, n)`` in eval mode and finite
        losses for generated targets in train mode; optical flow: ``(batch, 2, H, W)`` flows. A
        ``quantized_*`` builder's converted model (``quantize=True``, CPU) is checked too. Where the
        gradient check runs as well, it asserts the train-mode shapes on its own forward instead.
        """
        structural.forward_shape(self, zoo_model_name, zoo_device, zoo_hypothesis_settings)

    def test_freeze_counts(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """After freezing, exactly the parameters that must train do, and the backbone outweighs a
        plain class head.

        What must train: the class-dependent parameters, everything ``replace_head`` introduced,
        what the class declares (:attr:`trainable`, :meth:`must_train`), and the backbone's
        normalisation parameters when :attr:`norm_policy` keeps them trainable.
        """
        structural.freeze_counts(self, zoo_model_name, zoo_device, zoo_hypothesis_settings)

    def test_gradients_reach_head_only(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """A backward pass through every output puts ``.grad`` on exactly the parameters that must train.

        Detectors are run in train mode with generated targets and the sum of their losses is
        backpropagated. A model without a class head (RAFT) trains end to end instead: the flow's
        backward pass must reach every parameter. When :attr:`norm_policy` declares running
        statistics frozen, that same train-mode forward must leave every backbone normalisation
        buffer as it was (``num_batches_tracked`` included). Its outputs must have the train-mode
        shapes of :meth:`test_forward_shape`, which leaves them to this forward when this test runs.
        """
        structural.gradients_reach_head_only(self, zoo_model_name, zoo_device, zoo_hypothesis_settings)

    def test_replace_head_keeps_dtype_and_device(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_hypothesis_settings: settings
    ) -> None:
        """The new head is created where the model lives: same dtype, same device.

        The model is converted to float64 first, so a head built with ``nn.Linear(...)``'s float32
        default shows even on a CPU-only CI machine; on a GPU runner the device is checked too.
        """
        structural.replace_head_keeps_dtype_and_device(
            self, zoo_model_name, zoo_device, zoo_hypothesis_settings
        )

    def test_training_step(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """One SGD step (momentum, weight decay, over all of ``model.parameters()``) after
        ``model.train()``: every parameter that must train moves, every other one is bit-identical,
        and under ``NormPolicy(stats="frozen")`` no backbone running statistic moves."""
        values.training_step(self, zoo_model_name, zoo_device)

    def test_finite_outputs_and_backward(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """After ``replace_head`` the model holds no NaN (a head from ``torch.empty`` is NaN here),
        its eval and train outputs are finite, and with nothing frozen every parameter gets a finite
        gradient (timm's ``test_model_backward``)."""
        values.finite_outputs_and_backward(self, zoo_model_name, zoo_device)

    def test_state_dict_round_trip(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """The fine-tuned ``state_dict`` saved to a file, loaded with ``weights_only=True`` into a fresh
        model made by the same hooks, with ``strict=True``: no missing or unexpected key (a wrapper
        prefix is named), identical eval outputs."""
        values.state_dict_round_trip(self, zoo_model_name, zoo_device)

    def test_batch_equivalence(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """In eval mode each sample's output in a batch equals its output alone (transformers'
        ``test_batching_equivalence`` tolerance): a head that mixes samples fails."""
        values.batch_equivalence(self, zoo_model_name, zoo_device)

    def test_channels_last_and_autocast(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """A channels_last model and input reproduce the eager output (a ``.view`` head breaks
        there), and a forward under ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA) is finite
        with the float32 shapes (a head that cannot take the autocast dtype breaks there)."""
        values.channels_last_and_autocast(self, zoo_model_name, zoo_device)

    def test_deployability(
        self, zoo_model_name: str, zoo_device: torch.device, zoo_deploy: tuple[str, ...]
    ) -> None:
        """``torch.export``, ``torch.compile(backend="eager")``, ``torch.jit.script`` and
        ``torch.fx.symbolic_trace`` of the eval model reproduce eager outputs. Collected only
        where there is something to deploy (:attr:`deploy`, else ``--zoo-deploy``): it is the
        most expensive check. Declared exceptions are strict xfails."""
        values.deployability(self, zoo_model_name, zoo_device, zoo_deploy)

    def test_default_weights_metadata(self, zoo_model_name: str) -> None:
        """The DEFAULT weights enum describes the model the builder makes; nothing is downloaded."""
        values.default_weights_metadata(self, zoo_model_name)

    def test_pretrained_weights_reach_model(self, zoo_model_name: str, zoo_device: torch.device) -> None:
        """After the hooks every backbone tensor equals the checkpoint the build was served, bit for
        bit (the head, the layers ``replace_head`` introduced and :attr:`reinitialised` excepted);
        a mismatch is counted, blamed on a hook and explained. Skipped for a from-scratch build."""
        pretrained.pretrained_weights_reach_model(self, zoo_model_name, zoo_device)
