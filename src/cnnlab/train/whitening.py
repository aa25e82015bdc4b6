"""The first convolution started as a whitening of the training images' patches.

Coates, Lee & Ng 2011 ("An analysis of single-layer networks in unsupervised feature
learning") whiten image patches before learning features from them, and airbench (Jordan 2024,
arXiv:2404.00498) starts its first convolution as such a whitening, one filter per
eigenvector of the patches' covariance and its negative, so that the ReLU after it keeps both
signs. The same here, as an initialisation of the network's own first convolution (its shape
unchanged, trained like every other layer afterwards):

    patches p of the normalised training images, of the convolution's kernel size;
    covariance C = E[(p - m)(p - m)^T] = V diag(lambda) V^T;
    filters v_i / sqrt(lambda_i + eps) and their negatives, for the largest lambda_i:
    out_channels // 2 eigenvectors (an odd filter left over keeps its random start).

On its images each filter's output then has mean 0 (through the bias, where there is one)
and variance lambda_i / (lambda_i + eps), close to 1: the directions the images vary least in
are not amplified beyond 1 / sqrt(eps).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cnnlab.models.layers import first_conv

__all__ = ["patch_covariance", "whiten_first_conv"]

SAMPLE_IMAGES = 2_000  # images whose patches estimate the covariance (evenly spaced)
CHUNK = 250  # images unfolded at a time (2,000 CIFAR images at once: ~220 MB of patches)
EPS = 5e-4  # relative to the mean eigenvalue (airbench's 5e-4 on per-channel unit inputs)


def patch_covariance(
    images: Tensor,
    kernel: tuple[int, int],
    normalize: nn.Module | None = None,
    dilation: tuple[int, int] = (1, 1),
) -> tuple[Tensor, Tensor]:
    """Mean (D,) and covariance (D x D) of all kernel-sized patches, D = C * kh * kw.

    Patches are flattened channel first, as a convolution's weight is (`F.unfold`'s order),
    and spread as a convolution with `dilation` sees them. `images` (N x C x H x W) go through
    `normalize` first, as the network sees them.
    """
    d = images.shape[1] * kernel[0] * kernel[1]
    total = 0
    first = torch.zeros(d, dtype=torch.float64, device=images.device)  # sum of the patches
    second = torch.zeros(d, d, dtype=torch.float64, device=images.device)  # of their products
    for start in range(0, images.shape[0], CHUNK):
        x = images[start : start + CHUNK]
        x = (normalize(x) if normalize is not None else x).double()
        p = F.unfold(x, kernel, dilation).transpose(1, 2).flatten(0, 1)  # patches x D
        total += p.shape[0]
        first += p.sum(0)
        second += p.T @ p
    if not total:
        raise ValueError("no image patches to estimate the covariance from")
    mean = first / total
    return mean, second / total - torch.outer(mean, mean)


@torch.no_grad()
def whiten_first_conv(net: nn.Module, images: Tensor, normalize: nn.Module | None = None) -> int:
    """Start `net`'s first convolution as the whitening of `images`' patches (module doc).

    Args:
        net: the network, before training.
        images: training images, N x C x H x W (uint8 or float); SAMPLE_IMAGES of them,
            evenly spaced, are used.
        normalize: the input normalisation the network trains with.

    Returns:
        how many filters were set (an even number).

    Raises:
        ValueError: the network has no convolution, or its first one is grouped, takes
            another number of channels than the images have, or has fewer than two filters.
    """
    _, conv = first_conv(net)
    if conv.groups != 1 or conv.in_channels != images.shape[1] or conv.out_channels < 2:
        raise ValueError(
            f"the first convolution ({conv.in_channels} -> {conv.out_channels} channels, "
            f"groups={conv.groups}) cannot start as a whitening of {images.shape[1]}-channel "
            "images: it needs one group, the images' channels and at least two filters"
        )
    step = max(1, images.shape[0] // SAMPLE_IMAGES)
    kernel = (conv.kernel_size[0], conv.kernel_size[1])
    dilation = (conv.dilation[0], conv.dilation[1])
    mean, cov = patch_covariance(images[::step][:SAMPLE_IMAGES], kernel, normalize, dilation)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    k = min(conv.out_channels // 2, eigenvalues.numel())
    eps = EPS * eigenvalues.mean().clamp(min=1e-12)
    top = eigenvalues[-k:].flip(0).clamp(min=0)
    filters = (eigenvectors[:, -k:].flip(1) / (top + eps).sqrt()).T  # k x D, largest first
    filters = torch.cat([filters, -filters])  # the ReLU after it keeps both signs
    weight = conv.weight
    weight[: 2 * k] = filters.reshape(2 * k, *weight.shape[1:]).to(weight.dtype)
    if conv.bias is not None:
        conv.bias[: 2 * k] = -(filters @ mean).to(conv.bias.dtype)
    return 2 * k
