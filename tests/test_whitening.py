"""The first convolution started as a whitening of image patches (cnnlab.train.whitening)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.data import Normalize
from cnnlab.models.layers import first_conv
from cnnlab.train.whitening import patch_covariance, whiten_first_conv


def smooth_images(n: int = 40, size: int = 12, seed: int = 0) -> torch.Tensor:
    """uint8 images with neighbouring pixels and channels correlated, as in photographs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x = F.avg_pool2d(x, 3, 1, 1) + 0.5 * x.mean(1, keepdim=True)  # spatial and colour
    return (x / x.max() * 255).to(torch.uint8)


def test_patch_covariance_matches_patches_taken_one_by_one() -> None:
    images = smooth_images(5, 7)
    patches = np.array([
        images[i, :, y : y + 3, x : x + 2].double().numpy().ravel()  # channel first, as weights
        for i in range(5) for y in range(5) for x in range(6)
    ])  # fmt: skip
    mean, cov = patch_covariance(images, (3, 2))
    np.testing.assert_allclose(mean.numpy(), patches.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(patches.T, bias=True), rtol=1e-9, atol=1e-9)
    spread = np.array([  # every other pixel, as a convolution with dilation 2 sees them
        images[i, :, y : y + 5 : 2, x : x + 3 : 2].double().numpy().ravel()
        for i in range(5) for y in range(3) for x in range(5)
    ])  # fmt: skip
    _, cov = patch_covariance(images, (3, 2), dilation=(2, 2))
    np.testing.assert_allclose(cov.numpy(), np.cov(spread.T, bias=True), rtol=1e-9, atol=1e-9)


def test_whitened_filters_decorrelate_the_patches_in_pairs_of_opposite_sign() -> None:
    images = smooth_images()
    normalize = Normalize.fit(images, "channel")
    conv = nn.Conv2d(3, 9, 3, bias=True)  # odd: four pairs, the ninth filter left as it was
    ninth = conv.weight[8].detach().clone()
    assert whiten_first_conv(nn.Sequential(conv, nn.ReLU()), images, normalize) == 8
    with torch.no_grad():
        out = conv(normalize(images)).transpose(0, 1).flatten(1).double()  # filters x positions
    w = conv.weight.detach()
    torch.testing.assert_close(w[4:8], -w[:4])
    torch.testing.assert_close(conv.weight[8].detach(), ninth)
    torch.testing.assert_close(out[:8].mean(1), torch.zeros(8, dtype=torch.float64), atol=1e-5,
                               rtol=0)  # fmt: skip
    # Outputs uncorrelated, each of variance lambda / (lambda + eps): between 0.9 and 1 for the
    # patches' four largest directions, falling with lambda.
    cov = torch.cov(out[:4], correction=0)
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 1e-4
    variances = torch.diag(cov)
    assert variances.min() > 0.9 and variances.max() <= 1 + 1e-4
    assert torch.all(variances[:-1] >= variances[1:] - 1e-6)


def test_whitening_starts_a_resnet_at_the_same_patches_it_would_have_seen() -> None:
    from cnnlab.models.registry import create_model

    net = create_model("resnet20")
    images = smooth_images(30, 32)
    assert whiten_first_conv(net, images, Normalize.fit(images, "channel")) == 16
    assert first_conv(net) == ("conv1", net.conv1)


def test_whitening_refuses_what_it_cannot_whiten() -> None:
    images = smooth_images(4)
    with pytest.raises(ValueError, match="no 2-d convolution"):
        whiten_first_conv(nn.Linear(3, 3), images)
    with pytest.raises(ValueError, match="one group, the images' channels"):
        whiten_first_conv(nn.Conv2d(3, 6, 3, groups=3), images)
    with pytest.raises(ValueError, match="one group, the images' channels"):
        whiten_first_conv(nn.Conv2d(1, 6, 3), images)
