"""The one declarative table of what pytest-zoo knows about each torchvision family.

Every piece of per-family knowledge (where the head is, which inputs are legal, which builder
keyword arguments keep a build offline and cheap) is a row here, so that the rest of the kit has
no ``if name.startswith(...)`` branches. Rows are verified against torchvision's own builders by
the test suite: a row that goes stale after an upgrade fails loudly instead of silently.

This module imports neither torch nor torchvision, so the pytest plugin can read it for free.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["FAMILIES", "Family", "InputSpec", "family_for", "find_family"]


@dataclass(frozen=True)
class InputSpec:
    """Which spatial input sizes a family accepts, declared rather than discovered by trial.

    ``min_size`` is the smallest square side the model accepts in eval mode. A family whose size is
    fixed when the model is built (ViT's ``image_size``, MaxViT's ``input_size``) names the builder
    keyword in ``size_kwarg`` and the size the kit builds it with in ``fixed``: such a model accepts
    exactly that size and nothing else. ``train_min_size`` exists because some auxiliary heads need
    a larger feature map than the main path (Inception's ``AuxLogits`` pools 5x5 then convolves 5x5).
    """

    min_size: int = 1
    multiple: int = 1
    fixed: int | None = None
    size_kwarg: str | None = None
    #: The builder takes the fixed size as an ``(H, W)`` pair rather than one int (MaxViT).
    size_as_pair: bool = False
    train_min_size: int | None = None
    #: How far above ``min_size`` generated inputs may go; bounded to keep CPU runs cheap.
    span: int = 32

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.multiple < 1 or self.span < 0:
            raise ValueError(f"invalid InputSpec {self!r}: sizes and multiples must be positive")
        if (self.fixed is None) != (self.size_kwarg is None):
            raise ValueError(f"invalid InputSpec {self!r}: 'fixed' and 'size_kwarg' go together")

    def size_kwargs(self) -> dict[str, object]:
        """The builder keyword that fixes the input size, if the family has one."""
        if self.size_kwarg is None:
            return {}
        return {self.size_kwarg: (self.fixed, self.fixed) if self.size_as_pair else self.fixed}

    def sizes(self, *, train: bool = False) -> tuple[int, int]:
        """The inclusive range ``(low, high)`` of legal square sides, each a multiple of ``multiple``."""
        if self.fixed is not None:
            return self.fixed, self.fixed
        low = max(self.min_size, self.train_min_size or 0) if train else self.min_size
        low = -(-low // self.multiple) * self.multiple
        high = max(low, (low + self.span) // self.multiple * self.multiple)
        return low, high


@dataclass(frozen=True)
class Family:
    """One row of the table: a set of builders that share a model class and a head layout.

    ``heads`` are the dotted paths of the layers whose shape depends on the number of classes;
    ``aux_heads`` are such layers that exist only in some configurations (GoogLeNet's ``aux1``,
    Inception's ``AuxLogits``) and are replaced when present. ``num_classes_attrs`` are plain
    attributes that record the class count and would otherwise go stale (SqueezeNet).
    """

    name: str
    builders: tuple[str, ...]
    model_class: str
    heads: tuple[str, ...]
    aux_heads: tuple[str, ...] = ()
    num_classes_attrs: tuple[str, ...] = ()
    inputs: InputSpec = InputSpec()
    build_kwargs: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    task: str = "classification"
    notes: str = ""

    def matches(self, builder: str) -> bool:
        return any(fnmatch.fnmatchcase(builder, pattern) for pattern in self.builders)


_TV = "torchvision.models"
_SILENCE_INIT_WARNING = MappingProxyType({"init_weights": True})

FAMILIES: tuple[Family, ...] = (
    Family("alexnet", ("alexnet",), f"{_TV}.alexnet.AlexNet", ("classifier.6",), inputs=InputSpec(63)),
    Family("convnext", ("convnext_*",), f"{_TV}.convnext.ConvNeXt", ("classifier.2",), inputs=InputSpec(32)),
    Family("densenet", ("densenet*",), f"{_TV}.densenet.DenseNet", ("classifier",), inputs=InputSpec(29)),
    Family(
        "efficientnet",
        ("efficientnet_b?", "efficientnet_v2_?"),
        f"{_TV}.efficientnet.EfficientNet",
        ("classifier.1",),
        inputs=InputSpec(1),
    ),
    Family(
        "googlenet",
        ("googlenet",),
        f"{_TV}.googlenet.GoogLeNet",
        ("fc",),
        aux_heads=("aux1.fc2", "aux2.fc2"),
        inputs=InputSpec(15),
        build_kwargs=_SILENCE_INIT_WARNING,
        notes="aux heads exist when aux_logits=True; the builder drops them when it loads weights",
    ),
    Family(
        "inception",
        ("inception_v3",),
        f"{_TV}.inception.Inception3",
        ("fc",),
        aux_heads=("AuxLogits.fc",),
        inputs=InputSpec(75, train_min_size=299, span=16),
        build_kwargs=_SILENCE_INIT_WARNING,
        notes="AuxLogits pools 5x5/3 then convolves 5x5: train mode needs Mixed_6e at 17x17",
    ),
    Family(
        "maxvit",
        ("maxvit_t",),
        f"{_TV}.maxvit.MaxVit",
        ("classifier.5",),
        inputs=InputSpec(224, multiple=224, fixed=224, size_kwarg="input_size", size_as_pair=True),
        notes="input_size is fixed at build time; 7x7 partitions need multiples of 224",
    ),
    Family("mnasnet", ("mnasnet*",), f"{_TV}.mnasnet.MNASNet", ("classifier.1",)),
    Family("mobilenet_v2", ("mobilenet_v2",), f"{_TV}.mobilenetv2.MobileNetV2", ("classifier.1",)),
    Family("mobilenet_v3", ("mobilenet_v3_*",), f"{_TV}.mobilenetv3.MobileNetV3", ("classifier.3",)),
    Family("regnet", ("regnet_[xy]_*",), f"{_TV}.regnet.RegNet", ("fc",)),
    Family("resnet", ("resnet*", "resnext*", "wide_resnet*"), f"{_TV}.resnet.ResNet", ("fc",)),
    Family("shufflenet_v2", ("shufflenet_v2_*",), f"{_TV}.shufflenetv2.ShuffleNetV2", ("fc",)),
    Family(
        "squeezenet",
        ("squeezenet1_0", "squeezenet1_1"),
        f"{_TV}.squeezenet.SqueezeNet",
        ("classifier.1",),
        num_classes_attrs=("num_classes",),
        inputs=InputSpec(21),
        notes="the head is a 1x1 Conv2d, not a Linear",
    ),
    Family("swin", ("swin_*",), f"{_TV}.swin_transformer.SwinTransformer", ("head",), inputs=InputSpec(4)),
    Family("vgg", ("vgg*",), f"{_TV}.vgg.VGG", ("classifier.6",), inputs=InputSpec(32)),
    # ViT's image_size is fixed at build time and must be divisible by the patch size; the kit
    # builds with two patches a side, which leaves the head (and every check) unchanged.
    Family(
        "vit_16",
        ("vit_?_16",),
        f"{_TV}.vision_transformer.VisionTransformer",
        ("heads.head",),
        inputs=InputSpec(32, multiple=16, fixed=32, size_kwarg="image_size"),
    ),
    Family(
        "vit_32",
        ("vit_?_32",),
        f"{_TV}.vision_transformer.VisionTransformer",
        ("heads.head",),
        inputs=InputSpec(64, multiple=32, fixed=64, size_kwarg="image_size"),
    ),
    Family(
        "vit_14",
        ("vit_h_14",),
        f"{_TV}.vision_transformer.VisionTransformer",
        ("heads.head",),
        inputs=InputSpec(28, multiple=14, fixed=28, size_kwarg="image_size"),
    ),
)


def find_family(builder: str) -> Family | None:
    """The first row whose builder patterns match ``builder``, or ``None``."""
    for family in FAMILIES:
        if family.matches(builder):
            return family
    return None


def family_for(builder: str) -> Family:
    """Like :func:`find_family`, but a builder with no row is an error that says what to do."""
    family = find_family(builder)
    if family is None:
        raise LookupError(
            f"pytest-zoo has no family row for the builder {builder!r}. Known families: "
            f"{', '.join(sorted({f.name for f in FAMILIES}))}. Register the model class with "
            "pytest_zoo.register_adapter(...) to use replace_head/freeze_backbone on it."
        )
    return family
