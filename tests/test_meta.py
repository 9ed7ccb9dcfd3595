"""The memoised meta kernels: what a structural check observes is what torch's own kernels give.

Outputs (shape, strides, dtype), gradients and errors are compared with torch's kernels run without
the memo; views, metadata-changing in-place operators and real tensors must never be answered from
it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from pytest_zoo.models import building, meta
from pytest_zoo.models.meta import meta_fast_paths


def _layout(tensor: torch.Tensor | None) -> tuple[object, ...] | None:
    return None if tensor is None else (tuple(tensor.shape), tensor.stride(), tensor.dtype)


def _forward_backward(model: nn.Module, size: int) -> list[object]:
    """What the shape checks read: output layouts and the gradient of every parameter."""
    model.zero_grad(set_to_none=True)
    output = model(torch.empty(2, 3, size, size, device="meta"))
    output.sum().backward()
    return [_layout(output), *(_layout(p.grad) for p in model.parameters())]


@pytest.mark.parametrize(
    ("name", "size"),
    [("resnet18", 64), ("mobilenet_v3_small", 64), ("convnext_tiny", 64), ("swin_t", 64), ("vit_b_16", 32)],
)
def test_memoised_forward_and_backward_match_torchs_own_meta_kernels(name: str, size: int) -> None:
    model = building.build_model(name, structural=True).train()
    expected = _forward_backward(model, size)
    meta._MEMO.clear()
    with meta_fast_paths():
        first = _forward_backward(model, size)
        assert meta._MEMO, "nothing was memoised"
        again = _forward_backward(model, size)  # now answered from the memo
    assert first == expected
    assert again == expected


def _operands() -> dict[str, torch.Tensor]:
    meta = {"device": "meta"}
    return {
        "x": torch.empty(2, 3, 4, 5, **meta),
        "cl": torch.empty(2, 3, 4, 5, **meta).to(memory_format=torch.channels_last),
        "t": torch.empty(2, 3, 4, 5, **meta).transpose(1, 3),
        "w": torch.empty(3, 1, 1, **meta),
        "i": torch.empty(2, 3, 4, 5, dtype=torch.int64, **meta),
        "h": torch.empty(5, dtype=torch.float16, **meta),
        "s": torch.empty((), dtype=torch.float64, **meta),
        "shuffled": torch.empty(1, 2, 116, 1, 1, **meta).transpose(1, 2),  # also channels-last-3d
        "half": torch.empty(1, 6, 1, 1, **meta)[:, :3],
    }


ELEMENTWISE = [
    lambda o: o["x"] * o["w"],
    lambda o: o["w"] + o["x"],
    lambda o: o["cl"] * 2,
    lambda o: o["cl"] + o["cl"],
    lambda o: o["cl"] * o["w"],  # mixed layouts: torch's kernel decides
    lambda o: o["t"].relu(),
    lambda o: o["t"] + o["t"],  # neither contiguous nor channels-last: torch's kernel
    lambda o: o["i"].bitwise_and(o["x"]),  # the CPU probe refuses, the meta kernel does not
    lambda o: o["i"] / 2,
    lambda o: o["i"] // 3,
    lambda o: o["i"] + o["s"],
    lambda o: o["x"] + o["h"],
    lambda o: o["x"] > o["w"],
    lambda o: torch.where(o["x"] > 0, o["x"], o["w"]),
    lambda o: F.gelu(o["cl"]),
    lambda o: o["i"].sigmoid(),
    # shufflenet's channel shuffle at 1x1: a clone told its layout, on a tensor of size-1 dims
    lambda o: o["shuffled"].contiguous(),
    lambda o: o["shuffled"] + o["shuffled"],
    lambda o: o["shuffled"].relu() * 2,
    lambda o: o["half"] * o["w"],  # contiguous, with a size-1 batch dimension's odd stride
    lambda o: o["half"].sigmoid(),
    lambda o: o["x"].transpose(0, 1).clone(memory_format=torch.channels_last),
]


@pytest.mark.parametrize("expression", ELEMENTWISE, ids=range(len(ELEMENTWISE)))
def test_elementwise_outputs_have_torchs_shape_strides_and_dtype(expression: object) -> None:
    assert callable(expression)
    expected = _layout(expression(_operands()))
    meta._MEMO.clear()
    with meta_fast_paths():
        found = [_layout(expression(_operands())) for _ in range(2)]  # made, then replayed
    assert found == [expected, expected]


def test_elementwise_shape_errors_are_torchs() -> None:
    other = torch.empty(4, device="meta")
    with pytest.raises(RuntimeError) as plain:
        _operands()["x"] + other
    with meta_fast_paths(), pytest.raises(RuntimeError) as memoised:
        _operands()["x"] + other
    assert str(memoised.value) == str(plain.value)


def test_a_call_that_raises_raises_every_time_with_torchs_message() -> None:
    x = torch.empty(2, 4, device="meta")
    with pytest.raises(RuntimeError) as plain:
        F.layer_norm(x, (5,))
    with meta_fast_paths():
        for _ in range(2):
            with pytest.raises(RuntimeError) as memoised:
                F.layer_norm(x, (5,))
            assert str(memoised.value) == str(plain.value)
        for _ in range(2):
            with pytest.raises(RuntimeError, match=r"normal expects std >= 0\.0"):
                torch.empty(3, device="meta").normal_(0.0, -1.0)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(a.untyped_storage()._cdata == b.untyped_storage()._cdata)


def test_views_and_metadata_changing_in_place_operators_are_never_replayed() -> None:
    x = torch.empty(4, 6, device="meta")
    with meta_fast_paths():
        views = [x.view(6, 4) for _ in range(2)]
        grown = [torch.empty(3, device="meta") for _ in range(2)]
        for tensor in grown:
            tensor.unsqueeze_(0)  # the same call on the same metadata: it must run again
        scaled = [torch.empty(3, device="meta") for _ in range(2)]
        results = [tensor.mul_(2.0) for tensor in scaled]  # metadata unchanged: replayed as itself
    assert all(_same_storage(view, x) for view in views)
    assert [tuple(t.shape) for t in grown] == [(1, 3), (1, 3)]
    assert all(result is tensor for result, tensor in zip(results, scaled, strict=True))


def test_real_tensors_are_computed_not_replayed() -> None:
    with meta_fast_paths():
        values = [torch.arange(5) * 2 for _ in range(2)]
        picked = [torch.arange(6)[torch.arange(6) % 2 == 0] for _ in range(2)]
        meta_mixed = torch.empty(3, device="meta") * torch.tensor(2.0)  # a CPU scalar beside meta
    assert all(v.tolist() == [0, 2, 4, 6, 8] for v in values)
    assert all(p.tolist() == [0, 2, 4] for p in picked)
    assert meta_mixed.shape == (3,) and meta_mixed.is_meta


def test_nested_uses_push_one_mode_and_restore_batch_norm() -> None:
    with meta_fast_paths(), building.structural_init():
        memo_modes = [m for m in _get_current_dispatch_mode_stack() if isinstance(m, meta._MemoisedMeta)]
        assert len(memo_modes) == 1
        assert F.batch_norm is meta._shape_only_batch_norm
    assert F.batch_norm is meta._batch_norm
    assert not _get_current_dispatch_mode_stack()


def test_a_real_build_leaves_the_memo_and_gets_it_back() -> None:
    def memo_modes() -> int:
        return sum(isinstance(m, meta._MemoisedMeta) for m in _get_current_dispatch_mode_stack())

    with building.structural_init():
        with building.real_init():
            assert memo_modes() == 0
            with meta_fast_paths():  # a structural build inside the real one
                assert memo_modes() == 1
            assert F.batch_norm is meta._shape_only_batch_norm
            real = nn.Linear(2, 3)
        assert memo_modes() == 1 and F.batch_norm is meta._shape_only_batch_norm
        structural = nn.Linear(2, 3)
    assert not real.weight.is_meta and structural.weight.is_meta
    assert F.batch_norm is meta._batch_norm and not _get_current_dispatch_mode_stack()


def test_state_shapes_are_the_state_dicts_for_any_module() -> None:
    from pytest_zoo.models.reference import state_shapes

    class Extra(nn.Module):
        def get_extra_state(self) -> torch.Tensor:
            return torch.zeros(2)

    model = building.build_model("resnet18", structural=True)
    model.register_buffer("scratch", torch.zeros(3), persistent=False)
    model.tied = model.fc  # the same parameters under two names
    model.missing = None
    model.fc.register_parameter("unused", None)
    plain = state_shapes(model)
    assert list(plain.items()) == [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    model.extra = Extra()

    def drop_bias(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, local: object) -> None:
        del state["fc.bias"]

    model._register_state_dict_hook(drop_bias)
    hooked = state_shapes(model)
    assert list(hooked.items()) == [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert "fc.bias" not in hooked and "extra._extra_state" in hooked
