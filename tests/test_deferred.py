"""Fills overwritten unread are never drawn; every value a build reads is the one it asked for."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_zoo.models import building
from pytest_zoo.models.deferred import overwritten_fills_skipped


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def test_a_fill_overwritten_unread_draws_nothing() -> None:
    _seeded()
    with overwritten_fills_skipped():
        t = torch.empty(1000)
        t.uniform_()
        t.normal_()
    _seeded()
    assert torch.equal(t, torch.empty(1000).normal_())  # the generator never saw the uniform_


def test_a_read_in_between_gets_the_fill_it_follows() -> None:
    def steps() -> tuple[float, torch.Tensor, torch.Tensor]:
        t, u = torch.empty(500), torch.empty(500)
        t.uniform_(-1, 1)
        total = float(t.detach()[3:].sum())  # through views
        u.copy_(t)
        t.normal_()
        return total, t, u

    _seeded()
    with overwritten_fills_skipped():
        held = steps()
    _seeded()
    plain = steps()
    assert held[0] == plain[0]
    assert torch.equal(held[1], plain[1]) and torch.equal(held[2], plain[2])


def test_a_partial_write_keeps_the_rest_of_the_fill() -> None:
    _seeded()
    with overwritten_fills_skipped():
        t = torch.empty(100)
        t.uniform_()
        t[:10].zero_()
    _seeded()
    expected = torch.empty(100).uniform_()
    expected[:10] = 0
    assert torch.equal(t, expected)


def test_what_is_still_held_at_the_end_is_drawn_in_the_order_asked() -> None:
    _seeded()
    with overwritten_fills_skipped():
        a, b = torch.empty(64), torch.empty(64)
        a.uniform_()
        b.normal_()
        a.fill_(2.0)  # overwrites a: its uniform_ is never drawn, b's normal_ stays first
    _seeded()
    assert torch.equal(b, torch.empty(64).normal_())
    assert torch.equal(a, torch.full((64,), 2.0))


def test_a_copy_replaces_a_held_fill_and_reads_its_source() -> None:
    source = torch.arange(8.0)
    _seeded()
    with overwritten_fills_skipped():
        t = torch.empty(8)
        t.uniform_()
        t.copy_(source)
        after = torch.empty(8).normal_()
    _seeded()
    assert torch.equal(t, source)
    assert torch.equal(after, torch.empty(8).normal_())


def test_a_build_that_raises_leaves_no_uninitialised_memory() -> None:
    t = torch.empty(256)
    with pytest.raises(RuntimeError, match="builder failed"), overwritten_fills_skipped():
        t.fill_(3.0)
        raise RuntimeError("builder failed")
    assert torch.equal(t, torch.full((256,), 3.0))


def test_parameters_under_no_grad_and_nested_uses() -> None:
    with overwritten_fills_skipped(), overwritten_fills_skipped():
        layer = nn.Linear(32, 16)
        nn.init.zeros_(layer.bias)
        nn.init.kaiming_normal_(layer.weight)
    assert layer.weight.requires_grad and torch.isfinite(layer.weight).all()
    assert torch.equal(layer.bias, torch.zeros(16))
    layer(torch.randn(2, 32)).sum().backward()  # autograd is untouched
    assert layer.weight.grad is not None


def test_the_kits_build_draws_each_tensor_from_its_builders_initialiser() -> None:
    """resnet18 as torchvision builds it, and as the kit does: the same tensors, each a sample of
    the same initialiser (the kit's conv weights come from ResNet's kaiming_normal_ alone)."""
    from torchvision.models import resnet18

    _seeded()
    plain = resnet18().state_dict()
    _seeded()
    kit = building.build_model("resnet18").state_dict()
    assert plain.keys() == kit.keys()
    for key, tensor in plain.items():
        other = kit[key]
        assert other.shape == tensor.shape and other.dtype == tensor.dtype
        if not tensor.is_floating_point() or tensor.std() == 0:
            assert torch.equal(other, tensor), key
        elif tensor.numel() > 1000:
            assert abs(float(other.std() / tensor.std()) - 1) < 0.1, key
    assert not torch.equal(plain["conv1.weight"], kit["conv1.weight"])  # redrawn, not copied
