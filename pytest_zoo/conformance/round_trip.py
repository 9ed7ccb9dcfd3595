"""The state_dict round trip: the fine-tuned model's ``state_dict``, saved to a file and loaded
``weights_only`` and strictly into a fresh model from the caller's factory, gives the same eval outputs.

A failure names what users hit: keys a wrapper prefixed (``module.``, ``_orig_mod.``), a refused
strict load, or state the outputs depend on that the ``state_dict`` does not carry. It returns a
:class:`~pytest_zoo.conformance.training.CheckReport`, raising nothing for a failing model.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..atomic import scratch_dir
from ..compat import global_forward_hooks, mappable, save_unchecked
from ..models.reference import state_bytes
from .equivalence import compare_outputs, exact_arithmetic
from .reports import CheckReport, Inputs, call_model, describe_error, listed, model_device, needs_values

__all__ = ["STATELESS_IN_TRAINING", "WRAPPERS", "move_statistics", "state_dict_round_trip", "wrapper_prefix"]

#: Wrapper prefixes a saved ``state_dict`` can carry, and what added them.
WRAPPERS = {
    "module.": "nn.DataParallel / DistributedDataParallel: save model.module.state_dict()",
    "_orig_mod.": "torch.compile's OptimizedModule: save model._orig_mod.state_dict()",
}


def wrapper_prefix(saved: set[str], fresh: set[str]) -> str | None:
    for prefix in WRAPPERS:
        if saved and all(k.startswith(prefix) for k in saved) and {k[len(prefix) :] for k in saved} == fresh:
            return prefix
    return None


def state_dict_round_trip(
    model: nn.Module,
    build_fresh: Callable[[], nn.Module],
    inputs: Inputs,
    *,
    seed: int = 20_240_612,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    check: str = "state_dict round trip",
) -> CheckReport:
    """Save ``model.state_dict()`` to a file, reload it into a fresh model, and compare eval outputs.

    ``build_fresh()`` must build the same architecture through the same hooks (``build_model`` then
    ``replace_head(.., n)``); it runs under ``torch.manual_seed(seed)`` in a forked RNG, so its random
    initialisation differs from the model's, and its result is moved to the model's device.
    ``inputs`` are eval-mode inputs. Problems: missing/unexpected keys (naming a ``module.`` or
    ``_orig_mod.`` wrapper prefix), a refused strict load, and eval outputs that differ after the
    load (state the outputs depend on that is not in the ``state_dict``: a head kept in a plain
    list or attribute, a tensor that is not a parameter or persistent buffer).

    On the CPU the file is memory-mapped and its tensors become the fresh model's
    (``load_state_dict(strict=True, assign=True)``), so the round trip holds the model and the
    file's pages, not a third copy of the weights. ``assign`` can only misjudge a model that also
    reaches a parameter outside its registered ones (an alias in a plain list); so outputs that
    differ are confirmed with a second fresh model loaded by copy, the way users load, before
    anything is reported.
    """
    skipped = needs_values(check, model)
    if skipped is not None:
        return skipped
    device = model_device(model)
    mapped = device.type == "cpu"

    def fresh_model() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_fresh().to(device)

    state = model.state_dict()
    with tempfile.TemporaryDirectory(
        prefix="pytest-zoo-round-trip-", dir=scratch_dir(state_bytes(state)), ignore_cleanup_errors=True
    ) as tmp:
        path = mappable(Path(tmp) / "state_dict.pt")
        save_unchecked(state, path)
        saved = torch.load(path, weights_only=True, mmap=mapped, map_location=None if mapped else device)
        fresh = fresh_model()
        saved_keys, fresh_keys = set(saved), set(fresh.state_dict())
        found = {"missing": sorted(fresh_keys - saved_keys), "unexpected": sorted(saved_keys - fresh_keys)}
        expected: dict[str, object] = {"missing": [], "unexpected": []}
        if saved_keys != fresh_keys:
            problem = (
                f"missing keys {listed(found['missing'])}, unexpected keys {listed(found['unexpected'])}"
            )
            prefix = wrapper_prefix(saved_keys, fresh_keys)
            if prefix is not None:
                problem = f"every saved key carries the prefix {prefix!r} ({WRAPPERS[prefix]}); " + problem
            return CheckReport(
                check,
                problems=(f"the saved state_dict does not fit a fresh model: {problem}",),
                expected=expected,
                found=found,
            )
        try:
            fresh.load_state_dict(saved, strict=True, assign=mapped)
        except (RuntimeError, ValueError) as error:
            return CheckReport(
                check,
                problems=(describe_error("load_state_dict(strict=True)", error),),
                expected=expected,
                found=found,
            )
        model.eval()
        try:
            with exact_arithmetic():
                reference = call_model(model, inputs)

                def compare(reloaded: nn.Module) -> tuple[list[str], list[str]]:
                    output = call_model(reloaded.eval(), inputs)
                    return compare_outputs(reference, output, atol=atol, rtol=rtol, what="the reloaded model")

                problems, details = compare(fresh)
                if problems and mapped:
                    del fresh
                    fresh = fresh_model()
                    # read anew: after an assign=True load, copying loads of it replace parameters
                    saved = torch.load(path, weights_only=True, mmap=True)
                    fresh.load_state_dict(saved, strict=True)
                    problems, details = compare(fresh)
        except Exception as error:
            return CheckReport(check, problems=(describe_error("the eval forward", error),))
    if problems:
        problems.append(
            "some state the outputs depend on is not in state_dict: a head kept in a plain list or "
            "attribute, or a tensor that is not a registered parameter or persistent buffer"
        )
    return CheckReport(
        check, problems=tuple(problems), expected=expected, found=found, details=tuple(details)
    )


# -- before the round trip --------------------------------------------------------------------------

#: The classes whose train-mode forward under ``no_grad`` writes nothing at all (no running
#: statistics, no cache, no counter; dropout draws random numbers and keeps none), read in torch
#: 2.1.2, 2.5.1 and 2.14.1, torchvision 0.16.2, 0.20.1 and 0.29.1 (no method but ``__init__`` and the
#: containers' editing ones assigns to ``self`` or calls an in-place method of an attribute). Exact
#: classes: a subclass may add state of its own.
STATELESS_IN_TRAINING = frozenset(
    {
        *(
            f"torch.nn.modules.{name}"
            for name in (
                "activation.GELU",
                "activation.Hardsigmoid",
                "activation.Hardswish",
                "activation.MultiheadAttention",
                "activation.ReLU",
                "activation.ReLU6",
                "activation.SiLU",
                "activation.Sigmoid",
                "activation.Softmax",
                "activation.Tanh",
                "container.ModuleDict",
                "container.ModuleList",
                "container.Sequential",
                "conv.Conv1d",
                "conv.Conv2d",
                "conv.Conv3d",
                "dropout.Dropout",
                "flatten.Flatten",
                "linear.Identity",
                "linear.Linear",
                "linear.NonDynamicallyQuantizableLinear",
                "normalization.GroupNorm",
                "normalization.LayerNorm",
                "pooling.AdaptiveAvgPool1d",
                "pooling.AdaptiveAvgPool2d",
                "pooling.AdaptiveAvgPool3d",
                "pooling.AvgPool2d",
                "pooling.MaxPool2d",
                "pooling.MaxPool3d",
            )
        ),
        *(
            f"torchvision.{name}"
            for name in (
                "models.alexnet.AlexNet",
                "models.convnext.CNBlock",
                "models.convnext.ConvNeXt",
                "models.convnext.LayerNorm2d",
                "models.squeezenet.Fire",
                "models.squeezenet.SqueezeNet",
                "models.swin_transformer.PatchMerging",
                "models.swin_transformer.PatchMergingV2",
                "models.swin_transformer.ShiftedWindowAttention",
                "models.swin_transformer.ShiftedWindowAttentionV2",
                "models.swin_transformer.SwinTransformer",
                "models.swin_transformer.SwinTransformerBlock",
                "models.swin_transformer.SwinTransformerBlockV2",
                "models.vgg.VGG",
                "models.video.mvit.MViT",
                "models.video.mvit.MultiscaleAttention",
                "models.video.mvit.MultiscaleBlock",
                "models.video.mvit.Pool",
                "models.video.mvit.PositionalEncoding",
                "models.video.swin_transformer.PatchEmbed3d",
                "models.video.swin_transformer.ShiftedWindowAttention3d",
                "models.video.swin_transformer.SwinTransformer3d",
                "models.vision_transformer.Encoder",
                "models.vision_transformer.EncoderBlock",
                "models.vision_transformer.MLPBlock",
                "models.vision_transformer.VisionTransformer",
                "ops.misc.Conv2dNormActivation",
                "ops.misc.MLP",
                "ops.misc.Permute",
                "ops.stochastic_depth.StochasticDepth",
            )
        ),
    }
)

#: Attributes of those classes that only their ``__init__`` reads (a builder function kept as given).
_BUILD_TIME = {"torchvision.models.vision_transformer.VisionTransformer": frozenset({"norm_layer"})}

#: What any module keeps in ``__dict__`` (its children, tensors, hooks and mode).
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.Tensor, nn.Parameter)


def _plain(value: object) -> bool:
    """Data the vetted classes' code reads, never code it could call (a user's stateful callable)."""
    if isinstance(value, (tuple, list)):  # torch.Size too
        return all(_plain(v) for v in value)
    return type(value) in _PLAIN


def _stateless_in_training(module: nn.Module) -> bool:
    cls = type(module)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if (
        name not in STATELESS_IN_TRAINING
        or getattr(sys.modules.get(cls.__module__), cls.__name__, None) is not cls
    ):
        return False
    if any(getattr(module, hooks) for hooks in _HOOKS):
        return False
    tensors = [*module._parameters.values(), *module._buffers.values()]
    if any(t is not None and type(t) not in (nn.Parameter, torch.Tensor) for t in tensors):
        return False  # a tensor subclass runs code of its own on every op
    unread = _MODULE_INTERNALS | _BUILD_TIME.get(name, frozenset())
    return all(_plain(v) for k, v in vars(module).items() if k not in unread)


def trains_statelessly(model: nn.Module) -> bool:
    """Whether a train-mode forward of ``model`` under ``no_grad`` provably writes nothing: every
    module is of a class in :data:`STATELESS_IN_TRAINING`, as it is (no hook, no patched method, no
    callable or object attribute its code could call, no tensor subclass), and no global hook runs."""
    return not any(global_forward_hooks()) and all(_stateless_in_training(m) for m in model.modules())


def move_statistics(model: nn.Module, inputs: Inputs) -> None:
    """One train-mode forward, as fine-tuning takes: running statistics leave the initial values a
    fresh model also has, so that one the ``state_dict`` does not carry changes the reloaded
    outputs. A model that cannot take it here is left as it is (the training checks say why); one
    whose forward provably writes nothing (:func:`trains_statelessly`) is spared it."""
    if trains_statelessly(model):
        return
    model.train()
    with torch.no_grad(), contextlib.suppress(Exception):
        call_model(model, inputs)
