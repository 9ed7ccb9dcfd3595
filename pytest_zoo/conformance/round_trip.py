"""The state_dict round trip: the fine-tuned model's ``state_dict``, saved to a file and loaded
``weights_only`` and strictly into a fresh model from the caller's factory, gives the same eval outputs.

A failure names what users hit: keys a wrapper prefixed (``module.``, ``_orig_mod.``), a refused
strict load, or state the outputs depend on that the ``state_dict`` does not carry. It returns a
:class:`~pytest_zoo.conformance.training.CheckReport`, raising nothing for a failing model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..atomic import scratch_dir
from ..compat import mappable, save_unchecked
from .equivalence import compare_outputs, exact_arithmetic
from .reports import CheckReport, Inputs, call_model, describe_error, listed, model_device, needs_values

__all__ = ["WRAPPERS", "state_dict_round_trip", "wrapper_prefix"]

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
    size = sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
    with tempfile.TemporaryDirectory(
        prefix="pytest-zoo-round-trip-", dir=scratch_dir(size), ignore_cleanup_errors=True
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
