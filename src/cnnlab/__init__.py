"""cnnlab: the classic ImageNet-era convolutional networks, as the papers describe them.

The public surface:
    create_model(name, **options)   build a registered network; weights="IMAGENET1K_V1" (or any
                                    name torchvision publishes for it) loads torchvision's
                                    trained weights, described by `net.pretrained`
    list_models(pattern=None)       registered names (fnmatch pattern)
    model_card(name)                paper, input size, exact params and multiply-adds, results
    profile(model_or_name, ...)     per-layer output shape, params, MACs, neurons, connections,
                                    receptive field
    compare(specs)                  networks side by side ("vgg19", "googlenet:factorize=5x5"):
                                    params, MACs, receptive field, ratios to the first
"""

from cnnlab.analysis.comparison import Comparison, compare
from cnnlab.analysis.complexity import Profile, profile
from cnnlab.models.registry import ModelCard, create_model, list_models, model_card

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "ModelCard",
    "Profile",
    "compare",
    "create_model",
    "list_models",
    "model_card",
    "profile",
]
