"""The networks, one file per paper. Importing this package registers them all."""

from cnnlab.models import (
    alexnet,
    alexnet_cifar,
    googlenet,
    preact_resnet,
    resnet,
    resnet_cifar,
    vgg,
    zfnet,
)
from cnnlab.models.pretrained import Pretrained, WeightsFileError
from cnnlab.models.registry import (
    ModelCard,
    Reported,
    UnknownModelError,
    create_model,
    list_models,
    model_card,
    register_model,
)

__all__ = [
    "ModelCard",
    "Pretrained",
    "Reported",
    "UnknownModelError",
    "WeightsFileError",
    "alexnet",
    "alexnet_cifar",
    "create_model",
    "googlenet",
    "list_models",
    "model_card",
    "preact_resnet",
    "register_model",
    "resnet",
    "resnet_cifar",
    "vgg",
    "zfnet",
]
