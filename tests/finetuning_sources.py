"""Fine-tuning code as projects write it, for the real-session tests of ``tests/test_finetuning.py``.

``TUTORIAL`` is PyTorch's "Finetuning Torchvision Models" tutorial's ``initialize_model`` as published
(``weights=`` in place of the deprecated ``pretrained=``): it freezes *before* it swaps the head,
replaces Inception's ``AuxLogits.fc`` too and sets SqueezeNet's ``num_classes`` by hand.
``DETECTION`` is torchvision's "Object Detection Finetuning" tutorial's model factory.
"""

from __future__ import annotations

TUTORIAL = """
from torch import nn
from torchvision import models


def set_parameter_requires_grad(model, feature_extracting):
    if feature_extracting:
        for param in model.parameters():
            param.requires_grad = False


def initialize_model(model_name, num_classes, feature_extract, use_pretrained=True):
    model_ft = None
    input_size = 0
    weights = "DEFAULT" if use_pretrained else None
    if model_name == "resnet":
        model_ft = models.resnet18(weights=weights)
        set_parameter_requires_grad(model_ft, feature_extract)
        num_ftrs = model_ft.fc.in_features
        model_ft.fc = nn.Linear(num_ftrs, num_classes)
        input_size = 224
    elif model_name == "alexnet":
        model_ft = models.alexnet(weights=weights)
        set_parameter_requires_grad(model_ft, feature_extract)
        num_ftrs = model_ft.classifier[6].in_features
        model_ft.classifier[6] = nn.Linear(num_ftrs, num_classes)
        input_size = 224
    elif model_name == "vgg":
        model_ft = models.vgg11_bn(weights=weights)
        set_parameter_requires_grad(model_ft, feature_extract)
        num_ftrs = model_ft.classifier[6].in_features
        model_ft.classifier[6] = nn.Linear(num_ftrs, num_classes)
        input_size = 224
    elif model_name == "squeezenet":
        model_ft = models.squeezenet1_0(weights=weights)
        set_parameter_requires_grad(model_ft, feature_extract)
        model_ft.classifier[1] = nn.Conv2d(512, num_classes, kernel_size=(1, 1), stride=(1, 1))
        model_ft.num_classes = num_classes
        input_size = 224
    elif model_name == "densenet":
        model_ft = models.densenet121(weights=weights)
        set_parameter_requires_grad(model_ft, feature_extract)
        num_ftrs = model_ft.classifier.in_features
        model_ft.classifier = nn.Linear(num_ftrs, num_classes)
        input_size = 224
    elif model_name == "inception":
        model_ft = models.inception_v3(weights=weights)
        set_parameter_requires_grad(model_ft, feature_extract)
        num_ftrs = model_ft.AuxLogits.fc.in_features
        model_ft.AuxLogits.fc = nn.Linear(num_ftrs, num_classes)
        num_ftrs = model_ft.fc.in_features
        model_ft.fc = nn.Linear(num_ftrs, num_classes)
        input_size = 299
    else:
        raise ValueError(f"Invalid model name {model_name}")
    return model_ft, input_size
"""

#: The gate over the tutorial, both ways: its factory as the one hook, and the three hooks around it.
TUTORIAL_GATES = """
from pytest_zoo import ZooConformance

from tutorial import initialize_model

NAMES = {
    "resnet18": "resnet", "alexnet": "alexnet", "vgg11_bn": "vgg", "squeezenet1_0": "squeezenet",
    "densenet121": "densenet", "inception_v3": "inception",
}
MODELS = ()
PRETRAINED = True


class TestFactory(ZooConformance):
    models = MODELS
    pretrained = PRETRAINED

    def create_model(self, name, num_classes):
        return initialize_model(NAMES[name], num_classes, feature_extract=True, use_pretrained=PRETRAINED)[0]


class TestHooks(ZooConformance):
    models = MODELS
    pretrained = PRETRAINED

    def build_model(self, name):
        return initialize_model(NAMES[name], 1000, feature_extract=True, use_pretrained=PRETRAINED)[0]

    def replace_head(self, model, num_classes):
        return initialize_model(NAMES[self.model_name], num_classes, True, PRETRAINED)[0]

    def freeze_backbone(self, model):
        pass  # initialize_model froze the backbone before it swapped the head
"""

#: A pretrained ResNet gate, correct, and with each of the four ways users lose the weights.
LOST_WEIGHTS = """
import torch
from torch import nn
from torchvision.models import get_model, get_model_weights

from pytest_zoo import ZooConformance


def swap(model, n):
    old = model.fc
    model.fc = nn.Linear(old.in_features, n, device=old.weight.device, dtype=old.weight.dtype)
    return model


class TestCorrect(ZooConformance):
    models = ("resnet18",)
    pretrained = True

    def build_model(self, name):
        return get_model(name, weights="DEFAULT")

    def replace_head(self, model, num_classes):
        return swap(model, num_classes)

    def freeze_backbone(self, model):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("fc."))


class TestEnumByName(TestCorrect):
    def build_model(self, name):
        return get_model(name, weights="IMAGENET1K_V1")  # an enum member's name; the enum works alike


class TestPrefix(TestCorrect):
    def build_model(self, name):
        model = get_model(name, weights=None)
        state = get_model_weights(name).DEFAULT.get_state_dict()  # as saved under DataParallel
        model.load_state_dict({"module." + k: v for k, v in state.items()}, strict=False)
        return model


class TestInitAfterLoading(TestCorrect):
    def build_model(self, name):
        model = get_model(name, weights="DEFAULT")

        def init_weights(module):  # meant for the new head
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

        model.apply(init_weights)
        return model


class TestFlagReadTheWrongWay(TestCorrect):
    use_pretrained = True

    def build_model(self, name):
        return get_model(name, weights=None if self.use_pretrained else "DEFAULT")


class TestKeyFilter(TestCorrect):
    def build_model(self, name):
        model = get_model(name, weights=None)
        state = torch.hub.load_state_dict_from_url(get_model_weights(name).DEFAULT.url)
        state = {k: v for k, v in state.items() if not k.startswith(("fc", "layer4"))}  # meant: "fc"
        model.load_state_dict(state, strict=False)
        return model


class TestRebuildWithoutWeights(TestCorrect):
    def replace_head(self, model, num_classes):
        return swap(get_model(self.model_name, weights=None), num_classes)  # the flag forgotten here


class TestReinitialisedOnPurpose(TestInitAfterLoading):
    reinitialised = ("conv1.*", "layer*.conv*", "layer*.downsample.0.*")
"""

#: torchvision's "Object Detection Finetuning" tutorial's factory, pretrained as published.
DETECTION = """
import torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from pytest_zoo import ZooConformance


def get_model_instance_segmentation(num_classes):
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights="DEFAULT")
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    in_features_mask = model.roi_heads.mask_predictor.conv5_mask.in_channels
    hidden_layer = 256
    model.roi_heads.mask_predictor = MaskRCNNPredictor(in_features_mask, hidden_layer, num_classes)
    return model


def get_detection_model(num_classes):
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights="DEFAULT")
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    return model


FACTORIES = {
    "fasterrcnn_resnet50_fpn": get_detection_model,
    "maskrcnn_resnet50_fpn": get_model_instance_segmentation,
}


class TestDetectionTutorial(ZooConformance):
    models = MODELS
    pretrained = True
    # With weights the builders freeze conv1 and layer1 (trainable_backbone_layers=3); the rest trains.
    trainable = ("backbone.body.layer2.*", "backbone.body.layer3.*", "backbone.body.layer4.*",
                 "backbone.fpn.*", "rpn.*", "roi_heads.*")

    def create_model(self, name, num_classes):
        return FACTORIES[name](num_classes)
"""
