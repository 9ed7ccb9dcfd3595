"""The one declarative table of what pytest-zoo knows about each torchvision family.

Every piece of per-family knowledge (where the head is, which inputs are legal, which builder
keyword arguments keep a build offline and cheap) is a row here, so that the rest of the kit has
no ``if name.startswith(...)`` branches. Rows are verified against torchvision's own builders by
the test suite: a row that goes stale after an upgrade fails loudly instead of silently.

This module imports neither torch nor torchvision (torchvision only to file a builder that has
no row under its task), so the pytest plugin can read it for free.
"""

from __future__ import annotations

from types import MappingProxyType

from .schema import Family, InputSpec
from .tasks import TASKS, filed_task

__all__ = ["FAMILIES", "TASKS", "Family", "InputSpec", "family_for", "find_family", "task_of"]


_TV = "torchvision.models"
_SILENCE_INIT_WARNING = MappingProxyType({"init_weights": True})

# Detection builds: small internal resize, few proposals and detections (the checks need shapes and
# label ranges, not recall), and a score threshold of 0 so an untrained model still returns boxes
# whose labels can be checked. None of these change a parameter shape.
_DETECTION_INPUTS = InputSpec(32, span=32, max_batch=2)
_RCNN_CHEAP = MappingProxyType(
    {
        "min_size": 64,
        "max_size": 96,
        "rpn_pre_nms_top_n_train": 64,
        "rpn_post_nms_top_n_train": 32,
        "rpn_pre_nms_top_n_test": 64,
        "rpn_post_nms_top_n_test": 32,
        "box_batch_size_per_image": 32,
        "box_detections_per_img": 8,
        "box_score_thresh": 0.0,
    }
)
_ONE_STAGE_CHEAP = MappingProxyType(
    {"min_size": 64, "max_size": 96, "score_thresh": 0.0, "detections_per_img": 8, "topk_candidates": 32}
)
_SSD_CHEAP = MappingProxyType({"score_thresh": 0.0, "detections_per_img": 8, "topk_candidates": 32})
_SEGMENTATION_INPUTS = InputSpec(16, span=16)
_WITH_AUX = MappingProxyType({"aux_loss": True})

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
        aux_kwarg="aux_logits",
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
        aux_kwarg="aux_logits",
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
    # -- detection: inputs are lists of 3xHxW images, resized inside the model to min_size..max_size.
    Family(
        "faster_rcnn",
        ("fasterrcnn_*",),
        f"{_TV}.detection.faster_rcnn.FasterRCNN",
        ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"),
        head_multiples=MappingProxyType({"roi_heads.box_predictor.bbox_pred": 4}),
        inputs=_DETECTION_INPUTS,
        build_kwargs=_RCNN_CHEAP,
        task="detection",
        notes="num_classes counts __background__; bbox_pred regresses 4 coordinates per class",
    ),
    Family(
        "mask_rcnn",
        ("maskrcnn_*",),
        f"{_TV}.detection.mask_rcnn.MaskRCNN",
        (
            "roi_heads.box_predictor.cls_score",
            "roi_heads.box_predictor.bbox_pred",
            "roi_heads.mask_predictor.mask_fcn_logits",
        ),
        head_multiples=MappingProxyType({"roi_heads.box_predictor.bbox_pred": 4}),
        inputs=_DETECTION_INPUTS,
        build_kwargs=_RCNN_CHEAP,
        task="detection",
    ),
    Family(
        "keypoint_rcnn",
        ("keypointrcnn_*",),
        f"{_TV}.detection.keypoint_rcnn.KeypointRCNN",
        ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"),
        head_multiples=MappingProxyType({"roi_heads.box_predictor.bbox_pred": 4}),
        inputs=_DETECTION_INPUTS,
        build_kwargs=_RCNN_CHEAP,
        task="detection",
        notes="roi_heads.keypoint_predictor depends on num_keypoints, not num_classes: not a class head",
    ),
    Family(
        "retinanet",
        ("retinanet_*",),
        f"{_TV}.detection.retinanet.RetinaNet",
        ("head.classification_head.cls_logits",),
        num_classes_attrs=("head.classification_head.num_classes",),
        head_multiples=MappingProxyType({"head.classification_head.cls_logits": 9}),
        inputs=_DETECTION_INPUTS,
        build_kwargs=_ONE_STAGE_CHEAP,
        task="detection",
        notes="9 anchors (3 sizes x 3 ratios) per location, one logit per anchor and class",
    ),
    Family(
        "fcos",
        ("fcos_*",),
        f"{_TV}.detection.fcos.FCOS",
        ("head.classification_head.cls_logits",),
        num_classes_attrs=("head.classification_head.num_classes",),
        inputs=_DETECTION_INPUTS,
        build_kwargs=_ONE_STAGE_CHEAP,
        task="detection",
    ),
    # ssdlite first: its heads sit one level deeper (Sequential(conv-norm-act, Conv2d)), so the
    # ssd300 adapter, whose paths name those Sequentials, must not be the one tried first.
    Family(
        "ssdlite",
        ("ssdlite320_*",),
        f"{_TV}.detection.ssd.SSD",
        tuple(f"head.classification_head.module_list.{i}.1" for i in range(6)),
        num_classes_attrs=("head.classification_head.num_columns",),
        head_multiples=MappingProxyType({f"head.classification_head.module_list.{i}.1": 6 for i in range(6)}),
        inputs=_DETECTION_INPUTS,
        build_kwargs=_SSD_CHEAP,
        task="detection",
        notes="resizes every image to 320x320 inside the model; 6 anchors per location at every level",
    ),
    Family(
        "ssd",
        ("ssd300_*",),
        f"{_TV}.detection.ssd.SSD",
        tuple(f"head.classification_head.module_list.{i}" for i in range(6)),
        num_classes_attrs=("head.classification_head.num_columns",),
        head_multiples=MappingProxyType(
            {f"head.classification_head.module_list.{i}": k for i, k in enumerate((4, 6, 6, 6, 4, 4))}
        ),
        inputs=_DETECTION_INPUTS,
        build_kwargs=_SSD_CHEAP,
        task="detection",
        notes="resizes every image to 300x300 inside the model; 4 or 6 anchors per location by level",
    ),
    # -- segmentation: outputs are {"out": (B, n, H, W), "aux": ...}; aux_loss=True builds the aux head.
    Family(
        "fcn",
        ("fcn_*",),
        f"{_TV}.segmentation.fcn.FCN",
        ("classifier.4",),
        aux_heads=("aux_classifier.4",),
        aux_kwarg="aux_loss",
        inputs=_SEGMENTATION_INPUTS,
        build_kwargs=_WITH_AUX,
        task="segmentation",
    ),
    Family(
        "deeplabv3",
        ("deeplabv3_*",),
        f"{_TV}.segmentation.deeplabv3.DeepLabV3",
        ("classifier.4",),
        aux_heads=("aux_classifier.4",),
        aux_kwarg="aux_loss",
        inputs=_SEGMENTATION_INPUTS,
        build_kwargs=_WITH_AUX,
        task="segmentation",
        notes="ASPP pools to 1x1 before a BatchNorm: train mode needs batches of 2",
    ),
    Family(
        "lraspp",
        ("lraspp_*",),
        f"{_TV}.segmentation.lraspp.LRASPP",
        ("classifier.low_classifier", "classifier.high_classifier"),
        inputs=_SEGMENTATION_INPUTS,
        task="segmentation",
        notes="no aux head; the low- and high-resolution branches each end in a class conv",
    ),
    # -- video: inputs are (B, 3, T, H, W).
    Family(
        "video_resnet",
        ("r3d_18", "mc3_18", "r2plus1d_18"),
        f"{_TV}.video.resnet.VideoResNet",
        ("fc",),
        inputs=InputSpec(16, span=16, frames=(1, 4)),
        task="video",
    ),
    Family(
        "s3d",
        ("s3d",),
        f"{_TV}.video.s3d.S3D",
        ("classifier.1",),
        inputs=InputSpec(224, span=0, frames=(14, 16), max_batch=2),
        task="video",
        notes="AvgPool3d((2, 7, 7)) after a 32x spatial and 8x temporal reduction: 224 pixels, 14 frames",
    ),
    Family(
        "mvit",
        ("mvit_v*",),
        f"{_TV}.video.mvit.MViT",
        ("head.1",),
        inputs=InputSpec(224, span=0, frames=(16, 16), max_batch=1),
        task="video",
        notes="the builders fix spatial_size=(224, 224), temporal_size=16 and reject overrides",
    ),
    Family(
        "swin3d",
        ("swin3d_*",),
        f"{_TV}.video.swin_transformer.SwinTransformer3d",
        ("head",),
        inputs=InputSpec(16, span=16, frames=(1, 4)),
        task="video",
        notes="pads to its (2, 4, 4) patches and (8, 7, 7) windows, so small clips are legal",
    ),
    # -- optical flow.
    Family(
        "raft",
        ("raft_*",),
        f"{_TV}.optical_flow.raft.RAFT",
        (),
        inputs=InputSpec(128, multiple=8, span=16, max_batch=2),
        task="optical_flow",
        notes="RAFT predicts flow, not classes: it has no class head and its builders take no num_classes",
    ),
)


def _quantized(float_family: str, module: str, cls: str) -> Family:
    """The row of a ``quantized_*`` builder: its float family's heads and geometry, task ``quantized``.

    The row describes the float model the builder returns with ``quantize=False``; the checks also
    convert it (``quantize=True``, CPU only) and check the converted model's head and outputs.
    """
    base = next(family for family in FAMILIES if family.name == float_family)
    return Family(
        f"quantized_{base.name}",
        tuple(f"quantized_{pattern}" for pattern in base.builders if not pattern.startswith("wide_")),
        f"{_TV}.quantization.{module}.{cls}",
        base.heads,
        aux_heads=base.aux_heads,
        aux_kwarg=base.aux_kwarg,
        num_classes_attrs=base.num_classes_attrs,
        inputs=base.inputs,
        build_kwargs=MappingProxyType({**base.build_kwargs, "quantize": False}),
        task="quantized",
    )


FAMILIES = (
    *FAMILIES,
    _quantized("googlenet", "googlenet", "QuantizableGoogLeNet"),
    _quantized("inception", "inception", "QuantizableInception3"),
    _quantized("mobilenet_v2", "mobilenetv2", "QuantizableMobileNetV2"),
    _quantized("mobilenet_v3", "mobilenetv3", "QuantizableMobileNetV3"),
    _quantized("resnet", "resnet", "QuantizableResNet"),
    _quantized("shufflenet_v2", "shufflenetv2", "QuantizableShuffleNetV2"),
)


def task_of(builder: str) -> str:
    """The task of ``builder``: its row's, else where torchvision files it, else classification.

    The fallback matters after a torchvision upgrade, when a snapshot records a builder that has
    no row yet; a model of the user's own (not a torchvision builder) is a classifier.
    """
    family = find_family(builder)
    if family is not None:
        return family.task
    from torchvision.models import get_model_builder

    try:
        return filed_task(get_model_builder(builder).__module__)
    except ValueError:
        return "classification"


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
