"""The model-building code acme-vision ships: pick a backbone, swap its head, choose what trains.

This is the code under test. It deliberately does not use pytest-zoo: the kit only checks it.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import get_model

#: Where each supported architecture keeps its class-dependent layers. GoogLeNet has two
#: auxiliary classifiers besides ``fc``; they exist only when it is built with ``aux_logits=True``.
HEADS: dict[str, tuple[str, ...]] = {
    "ResNet": ("fc",),
    "MobileNetV3": ("classifier.3",),
    "GoogLeNet": ("fc", "aux1.fc2", "aux2.fc2"),
    "AcmeNet": ("classifier",),
}


class AcmeNet(nn.Module):
    """acme-vision's own small architecture: a conv stem, BatchNorm, global pooling, a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_backbone(name: str, *, weights: str | None = None) -> nn.Module:
    """The architecture ``name`` with its original head (``weights=None`` never downloads)."""
    if name == "acmenet":
        return AcmeNet()
    kwargs = {"init_weights": True} if name == "googlenet" and weights is None else {}
    return get_model(name, weights=weights, **kwargs)


def head_paths(model: nn.Module) -> list[str]:
    """The head layers this model actually has (GoogLeNet built without aux heads has only ``fc``)."""
    paths = HEADS[type(model).__name__]
    present = []
    for path in paths:
        try:
            if model.get_submodule(path) is not None:
                present.append(path)
        except AttributeError:
            continue
    return present


def swap_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace every head layer by a fresh one with ``num_classes`` outputs, in place."""
    for path in head_paths(model):
        old = model.get_submodule(path)
        new = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return model


def build_classifier(name: str, num_classes: int, *, weights: str | None = None) -> nn.Module:
    """What training scripts call: a backbone with a head for ``num_classes`` classes."""
    return swap_head(build_backbone(name, weights=weights), num_classes)


def freeze(model: nn.Module) -> None:
    """Train the head only: every other parameter, BatchNorm's affine ones included, is frozen."""
    heads = head_paths(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name.startswith(path + ".") for path in heads))


class Classifier(nn.Sequential):
    """A backbone's body and a fresh multi-layer head: what acme-vision fine-tunes from ResNets.

    Built functionally (the body reuses the backbone's own modules), with a head of normalisation,
    dropout and two Linear layers; only the last one's size depends on the class count.
    """

    def __init__(self, body: nn.Module, in_features: int, num_classes: int, *, hidden: int = 256) -> None:
        like = next(body.parameters())
        factory = {"device": like.device, "dtype": like.dtype}
        head = nn.Sequential(
            nn.BatchNorm1d(in_features, **factory),
            nn.Dropout(0.25),
            nn.Linear(in_features, hidden, **factory),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes, **factory),
        )
        super().__init__(body, head)


def with_mlp_head(model: nn.Module, num_classes: int) -> Classifier:
    """A new model: ``model`` without its ``fc``, followed by a multi-layer head (ResNets only)."""
    body = nn.Sequential(*(child for name, child in model.named_children() if name != "fc"), nn.Flatten())
    return Classifier(body, model.get_submodule("fc").in_features, num_classes)


def freeze_body(model: nn.Module, *, train_bn: bool = True) -> None:
    """Freeze the body of a :class:`Classifier`; by default its BatchNorm layers keep training their
    weight and bias (acme-vision's recipe, like Lightning's ``train_bn=True``)."""
    body, head = model.children()
    for module in body.modules():
        trainable = train_bn and isinstance(module, nn.modules.batchnorm._BatchNorm)
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(trainable)
    head.requires_grad_(True)
