"""Test-time methods: the views (data/views.py), the fully convolutional form (models/dense.py)
and the averaging of posteriors (train/testtime.py).

Oracles: crops compared with hand slicing at hand-computed offsets; the fully convolutional
network against the original one at its input size and, at larger sizes, against the original
classifier on every window (exact at the features' stride); posteriors computed by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from cnnlab.data.views import (
    HE2015_SCALES,
    TestTime,
    center_view,
    dense_views,
    parse_scales,
    resize_shorter,
    ten_crop_views,
)
from cnnlab.models import create_model
from cnnlab.models.dense import FullyConvolutional, fully_convolutional
from cnnlab.train.testtime import ViewsResult, evaluate_views, scores

# -- views ------------------------------------------------------------------------------------

# Colours of the quadrants and of the centre square of `quadrant_image`.
TL, TR, BL, BR, CENTRE = (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)


def quadrant_image(size: int = 256) -> Tensor:
    """Four constant quadrants, a different centre square, and a white mark near the top-left
    corner, off the diagonal, so that every crop and its mirror differ."""
    img = torch.zeros(3, size, size, dtype=torch.uint8)
    h = size // 2
    for colour, rows, cols in (
        (TL, slice(0, h), slice(0, h)),
        (TR, slice(0, h), slice(h, size)),
        (BL, slice(h, size), slice(0, h)),
        (BR, slice(h, size), slice(h, size)),
        (CENTRE, slice(h - 20, h + 20), slice(h - 20, h + 20)),
    ):
        img[:, rows, cols] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    img[:, 40:44, 60:70] = 255  # inside every crop that holds the top-left region
    return img


def test_ten_crop_views_are_the_ten_patches_of_the_paper() -> None:
    img = quadrant_image(256)
    views = ten_crop_views(img, resize=256, crop=224)
    assert views.shape == (10, 3, 224, 224) and views.dtype == torch.uint8
    # 256 - 224 = 32: corners at offsets 0 and 32, the centre at 16 (Krizhevsky et al. 4.1).
    expected = [
        img[:, 0:224, 0:224],  # top-left
        img[:, 0:224, 32:256],  # top-right
        img[:, 32:256, 0:224],  # bottom-left
        img[:, 32:256, 32:256],  # bottom-right
        img[:, 16:240, 16:240],  # centre
    ]
    for i, patch in enumerate(expected):
        assert torch.equal(views[i], patch), f"view {i}"
        assert torch.equal(views[5 + i], patch.flip(-1)), f"view {5 + i} is not view {i} mirrored"
        assert not torch.equal(views[5 + i], views[i])  # the mark makes mirrors differ
    # Read the colours back: each corner view's corner pixel is that quadrant's colour.
    colour = [tuple(v[:, y, x].tolist()) for v, (y, x) in zip(views, [(0, 0), (0, 223), (223, 0),
              (223, 223), (112, 112)], strict=False)]  # fmt: skip
    assert colour == [TL, TR, BL, BR, CENTRE]
    assert tuple(views[5][:, 0, 223].tolist()) == TL  # mirrored top-left: TL at the right
    assert len({v.numpy().tobytes() for v in views}) == 10


def test_ten_crop_corners_are_those_of_the_central_square() -> None:
    # Section 2: shorter side to 256, then the central 256 x 256; the patches come from it.
    img = torch.full((3, 256, 340), 100, dtype=torch.uint8)
    img[:, :, :42] = 7  # the 42 columns left of the central square (340 - 256 = 84 = 2 x 42)
    img[:, :, 298:] = 9  # and right of it
    img[:, :, 42:298] = quadrant_image(256)
    views = ten_crop_views(img, resize=256, crop=224)
    square = img[:, :, 42:298]
    assert torch.equal(views[0], square[:, :224, :224])
    assert torch.equal(views[3], square[:, 32:, 32:])
    assert not ((views == 7) | (views == 9)).all(dim=1).any()  # nothing from outside


def test_views_resize_first_so_small_images_are_fine() -> None:
    small = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    assert ten_crop_views(small, 256, 224).shape == (10, 3, 224, 224)
    assert center_view(small, 256, 227).shape == (1, 3, 227, 227)
    assert dense_views(small, 384).shape == (2, 3, 384, 576)


def test_resize_shorter_keeps_the_aspect_ratio() -> None:
    img = torch.randint(0, 256, (3, 301, 200), dtype=torch.uint8)
    assert resize_shorter(img, 256).shape == (3, 385, 256)  # floor(256 * 301 / 200) = 385
    assert resize_shorter(img, 100).shape == (3, 150, 100)
    assert resize_shorter(img, 200) is img  # already that size
    flat = torch.full((3, 480, 640), 173, dtype=torch.uint8)
    assert (resize_shorter(flat, 256) == 173).all()  # antialiased bilinear keeps a constant


def test_resize_shorter_agrees_with_torchvision() -> None:
    # torchvision's Resize(size, antialias=True), the usual ImageNet evaluation resize; its CPU
    # path works on uint8 in fixed point, ours in float32, so grey levels may differ by one.
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 75, 111), dtype=torch.uint8)
    for size in (30, 256):  # down and up
        ours, theirs = resize_shorter(img, size), TF.resize(img, [size], antialias=True)
        assert ours.shape == theirs.shape
        assert (ours.int() - theirs.int()).abs().max() <= 1


def test_center_view_and_dense_views() -> None:
    img = quadrant_image(256)
    assert torch.equal(center_view(img, 256, 224)[0], img[:, 16:240, 16:240])
    assert torch.equal(center_view(img, 256, 256)[0], img)
    rect = torch.randint(0, 256, (3, 200, 300), dtype=torch.uint8)
    views = dense_views(rect, 256)
    assert views.shape == (2, 3, 256, 384)
    assert torch.equal(views[0], resize_shorter(rect, 256))
    assert torch.equal(views[1], views[0].flip(-1))


def test_crop_larger_than_resize_is_an_error() -> None:
    img = quadrant_image(64)
    with pytest.raises(ValueError, match="crop 257 is larger than resize 256"):
        center_view(img, 256, 257)
    with pytest.raises(ValueError, match="crop 240 is larger than resize 224"):
        TestTime.ten_crop(resize=224, crop=240)
    with pytest.raises(ValueError, match="crop must be a positive number of pixels, got 0"):
        ten_crop_views(img, 256, 0)


@pytest.mark.parametrize(
    "bad", [torch.zeros(3, 8, 8), torch.zeros(8, 8, dtype=torch.uint8), "image.jpg"]
)
def test_views_want_one_uint8_image(bad: object) -> None:
    with pytest.raises(ValueError, match="expected one uint8 image of shape C x H x W"):
        center_view(bad)  # type: ignore[arg-type]


def test_parse_scales() -> None:
    assert parse_scales("224,256,384,480,640") == HE2015_SCALES
    assert parse_scales(" 256 , 384") == (256, 384)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "needs comma-separated pixel sizes"),
        ("224,,256", "needs comma-separated pixel sizes"),
        ("224,abc", "'abc' is not a positive number of pixels"),
        ("0,256", "'0' is not a positive number of pixels"),
        ("-5", "'-5' is not a positive number of pixels"),
        ("256.5", "'256.5' is not a positive number of pixels"),
        ("2²", "'2²' is not a positive number of pixels"),
        ("224,256,224", "scale 224 is repeated"),
    ],
)
def test_parse_scales_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_scales(text)


def test_test_time_methods() -> None:
    assert TestTime.parse("center", 256, 227) == TestTime("center", 256, 227)
    ten = TestTime.parse("10crop")
    assert (ten.resize, ten.crop, ten.views_per_image) == (256, 224, 10)
    dense = TestTime.parse("dense", scales="256,384")
    assert dense == TestTime("dense", scales=(256, 384)) and dense.views_per_image == 4
    assert TestTime.parse("dense").scales == HE2015_SCALES
    img = torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8)
    assert [v.shape for v in dense.views(img)] == [(2, 3, 256, 384), (2, 3, 384, 576)]
    assert [v.shape for v in ten.views(img)] == [(10, 3, 224, 224)]
    assert "Krizhevsky" in ten.describe() and "256,384" in dense.describe()
    with pytest.raises(ValueError, match="must be one of center, 10crop, dense, got 'five'"):
        TestTime.parse("five", scales="256")
    with pytest.raises(ValueError, match="must be one of center, 10crop, dense, got 'five'"):
        TestTime("five", 256, 224)
    with pytest.raises(ValueError, match="--scales applies to --test-time dense only"):
        TestTime.parse("10crop", scales="256")
    with pytest.raises(ValueError, match="at least one scale"):
        TestTime.dense(())
    with pytest.raises(ValueError, match="dense evaluation takes scales, not resize and crop"):
        TestTime("dense", 256, 224, (256,))


# -- fully convolutional form -----------------------------------------------------------------


def _assert_same_logits(actual: Tensor, expected: Tensor) -> None:
    # Tolerance relative to the logits' own scale (ZFNet's N(0, 0.01) init gives ~1e-3).
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize(
    ("name", "options", "size"),
    [
        ("alexnet", {"layout": "paper"}, 227),
        ("alexnet", {"layout": "torchvision"}, 224),
        ("zfnet", {}, 224),
        ("vgg11", {"layout": "torchvision"}, 224),
        ("vgg11_bn", {"layout": "paper"}, 224),
    ],
)
def test_fully_convolutional_gives_the_networks_logits_at_its_input_size(
    name: str, options: dict[str, str], size: int
) -> None:
    torch.manual_seed(0)
    net = create_model(name, num_classes=10, **options).eval()
    dense = fully_convolutional(net)
    assert isinstance(dense, FullyConvolutional)
    convs = [m for m in dense.classifier if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.classifier if isinstance(m, nn.Linear)]
    k = 7 if name.startswith("vgg") else 6  # VGG 3.2: "the first FC layer to a 7 x 7 conv."
    assert [c.kernel_size for c in convs] == [(k, k), (1, 1), (1, 1)]
    for c, lin in zip(convs, linears, strict=True):  # shared storage, no copies
        assert c.weight.data_ptr() == lin.weight.data_ptr()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = net(x)
        assert dense.score_map(x).shape == (1, 10, 1, 1)
        _assert_same_logits(dense(x), expected)


def test_vgg_dense_at_256_averages_the_classifier_over_the_2x2_windows() -> None:
    # At 256 pool5 is 8 x 8, so the 7 x 7 first layer fits at 2 x 2 positions (a stride of 32
    # input pixels); at 256 x 288, 8 x 9 and 2 x 3. Exact oracle: the original classifier on
    # each 7 x 7 window of pool5, averaged. (The original network on the 224 crops at offsets
    # 0 and 32 is not the same: the convs' zero padding sees the crop's border where the whole
    # image has pixels; with random weights the two differ by ~20% of the logits' scale.)
    torch.manual_seed(0)
    net = create_model("vgg11", num_classes=10, layout="torchvision").eval()
    dense = fully_convolutional(net)
    x = torch.randn(1, 3, 256, 288)  # 8 x 9 pool5, 2 x 3 windows
    with torch.no_grad():
        pool5 = net.features(x)
        assert pool5.shape == (1, 512, 8, 9)
        windows = [
            net.classifier(pool5[:, :, i : i + 7, j : j + 7].flatten(1))
            for i in range(2)
            for j in range(3)
        ]
        score_map = dense.score_map(x)
        assert score_map.shape == (1, 10, 2, 3)
        _assert_same_logits(score_map[0, :, 1, 2], windows[5][0])
        _assert_same_logits(dense(x), torch.stack(windows).mean(0))


class UnpaddedNet(nn.Module):
    """features / avgpool / classifier as AlexNet and VGG, but without padding: a window of the
    input at a multiple of the stride (4) gives exactly the features at that offset."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2),  # 26 -> 24 -> 12
            nn.Conv2d(6, 8, 3), nn.ReLU(), nn.MaxPool2d(2),  # 12 -> 10 -> 5
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(5)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(8 * 5 * 5, 16), nn.ReLU(),
            nn.Dropout(), nn.Linear(16, num_classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_dense_equals_the_mean_over_shifted_crops_where_that_is_exact() -> None:
    # Without padding, the dense score at position (i, j) is the network's output on the
    # 26 x 26 crop at (4i, 4j): a 34 x 30 input gives 3 x 2 crops, and the average of the
    # score map is the average of the network's logits over those crops.
    torch.manual_seed(0)
    net = UnpaddedNet().eval()
    dense = fully_convolutional(net)
    x = torch.randn(2, 3, 34, 30)
    with torch.no_grad():
        crops = [
            net(x[:, :, 4 * i : 4 * i + 26, 4 * j : 4 * j + 26]) for i in range(3) for j in range(2)
        ]
        assert dense.score_map(x).shape == (2, 5, 3, 2)
        _assert_same_logits(dense(x), torch.stack(crops).mean(0))
        assert not torch.allclose(dense(x), net(x), atol=1e-4)  # the resampling pool differs
        with pytest.raises(
            ValueError, match="a 25x40 input gives 4x8 feature maps; .* needs at least 5x5"
        ):
            dense(torch.randn(1, 3, 25, 40))


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet18", (96, 128)),
        ("plain18", (64, 64)),
        ("preact_resnet18", (64, 96)),
        ("resnet20", (40, 48)),
        ("googlenet", (96, 128)),
    ],
)
def test_global_average_pooling_networks_are_already_fully_convolutional(
    name: str, size: tuple[int, int]
) -> None:
    # The linear classifier applied at every position of the last map, then averaged, equals
    # the network's own output (global average pool, then the linear layer).
    torch.manual_seed(0)
    net = create_model(name, num_classes=7).eval()
    assert fully_convolutional(net) is net
    maps: list[Tensor] = []
    net.avgpool.register_forward_hook(lambda m, args, out: maps.append(args[0]))
    with torch.no_grad():
        logits = net(torch.randn(2, 3, *size))
        fmap = maps[0]
        assert fmap.shape[2] * fmap.shape[3] > 1  # a real map, not a single position
        score_map = nn.functional.conv2d(fmap, net.fc.weight[:, :, None, None], net.fc.bias)
        _assert_same_logits(score_map.mean(dim=(2, 3)), logits)


def test_googlenet_torchvision_layout_is_also_recognised() -> None:
    net = create_model("googlenet", num_classes=3, layout="torchvision")
    assert fully_convolutional(net) is net


def test_unsupported_networks_are_named_in_the_error() -> None:
    with pytest.raises(TypeError, match="cannot make Sequential fully convolutional: .*avgpool"):
        fully_convolutional(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
    net = UnpaddedNet()
    net.classifier.insert(2, nn.BatchNorm1d(16))
    with pytest.raises(TypeError, match=r"classifier\[2\] is BatchNorm1d, expected Linear"):
        fully_convolutional(net)
    net = UnpaddedNet()
    net.avgpool = nn.AdaptiveAvgPool2d((None, 5))
    with pytest.raises(TypeError, match="cannot make UnpaddedNet fully convolutional"):
        fully_convolutional(net)


# -- averaging the posteriors -----------------------------------------------------------------


class MeanColourNet(nn.Module):
    """Logits from the mean colour of the input: class c < 3 scores 4 x channel c (0..1), class
    3 scores 0.5, class 4 scores -1, class 5 scores -2. Global average pool, then `fc`."""

    def __init__(self) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 6)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:3] = 4 * torch.eye(3)
            self.fc.bias.copy_(torch.tensor([0, 0, 0, 0.5, -1, -2]))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


def unit(x: Tensor) -> Tensor:
    return x.float() / 255


def softmax(logits: list[float]) -> list[float]:
    e = [math.exp(v) for v in logits]
    return [v / sum(e) for v in e]


def test_scores_average_the_posteriors_of_the_ten_crops_by_hand() -> None:
    # Red left half, blue right half, 256 x 256. The 224-pixel crops starting at column 0 hold
    # 128 red and 96 blue columns; those at column 32, 96 red and 128 blue; the centre (16),
    # 112 of each. Mirrors have the same mean colour. So the ten views' logits are, 4 x the
    # mean colour: (4*128/224, 0, 4*96/224) for TL, BL and their mirrors, (4*96/224, 0,
    # 4*128/224) for TR, BR and theirs, (2, 0, 2) for the centre and its mirror.
    img = torch.zeros(3, 256, 256, dtype=torch.uint8)
    img[0, :, :128] = 255
    img[2, :, 128:] = 255
    left = softmax([4 * 128 / 224, 0, 4 * 96 / 224, 0.5, -1, -2])
    right = softmax([4 * 96 / 224, 0, 4 * 128 / 224, 0.5, -1, -2])
    centre = softmax([2, 0, 2, 0.5, -1, -2])
    expected = [(4 * a + 4 * b + 2 * c) / 10 for a, b, c in zip(left, right, centre, strict=True)]
    net = MeanColourNet().eval()
    got = scores(net, ten_crop_views(img, 256, 224), unit, batch_size=3)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-6)
    # The papers average posteriors, not logits. The mean of the ten views' logits is (2, 0,
    # 2, 0.5, -1, -2), the centre's, whose softmax differs from the average above.
    assert abs(got[0].item() - centre[0]) > 1e-3


def test_scores_weigh_every_view_of_every_scale_the_same() -> None:
    net = MeanColourNet().eval()
    red = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    red[:, 0] = 255
    green = torch.zeros(3, 3, 16, 16, dtype=torch.uint8)
    green[:, 1] = 255
    p_red = softmax([4, 0, 0, 0.5, -1, -2])
    p_green = softmax([0, 4, 0, 0.5, -1, -2])
    expected = torch.tensor([(a + 3 * b) / 4 for a, b in zip(p_red, p_green, strict=True)])
    torch.testing.assert_close(scores(net, [red, green], unit), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="non-empty V x C x h x w"):
        scores(net, [], unit)


def _colour_image(colour: tuple[int, int, int], h: int, w: int) -> Tensor:
    return torch.tensor(colour, dtype=torch.uint8)[:, None, None].expand(3, h, w).clone()


@pytest.mark.parametrize(
    "method", [TestTime.center(), TestTime.ten_crop(64, 48), TestTime.dense((32, 40))]
)
@pytest.mark.parametrize("batch_size", [1, 25, 250])
def test_evaluate_views_errors_by_hand(method: TestTime, batch_size: int) -> None:
    # Constant images of three sizes: every view has the image's colour, whatever the method.
    # Red, label 0: top-1 right. Green, label 3: class 1 first, 3 second: top-5 right only.
    # Blue, label 5: class 5 is last of six: both wrong.
    items = [
        (_colour_image((255, 0, 0), 300, 200), 0),
        (_colour_image((0, 255, 0), 40, 90), torch.tensor(3)),
        (_colour_image((0, 0, 255), 256, 256), 5),
    ]
    net = MeanColourNet().train()
    r = evaluate_views(net, items, method, unit, device="cpu", batch_size=batch_size)
    assert isinstance(r, ViewsResult)
    assert (r.images, r.views_per_image) == (3, method.views_per_image)
    assert r.top1_error == pytest.approx(200 / 3)
    assert r.top5_error == pytest.approx(100 / 3)
    nll = -(
        math.log(softmax([4, 0, 0, 0.5, -1, -2])[0])
        + math.log(softmax([0, 4, 0, 0.5, -1, -2])[3])
        + math.log(softmax([0, 0, 4, 0.5, -1, -2])[5])
    )
    assert r.loss == pytest.approx(nll / 3, abs=1e-5)
    assert r.method == method.describe()
    assert net.training  # mode restored


def test_evaluate_views_dense_runs_the_fully_convolutional_form() -> None:
    torch.manual_seed(0)
    net = UnpaddedNet().eval()
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(30, 41), (50, 33)]]
    method = TestTime.dense((26, 34))
    dense = fully_convolutional(net)
    expected_nll = 0.0
    for img, label in zip(images, (1, 4), strict=True):
        posteriors = [
            dense(unit(v)[i : i + 1]).softmax(1)[0]
            for s in method.scales
            for v in [dense_views(img, s)]
            for i in range(2)
        ]
        expected_nll -= math.log(torch.stack(posteriors).mean(0)[label].item())
    with torch.no_grad():
        r = evaluate_views(net, zip(images, (1, 4), strict=True), method, unit, device="cpu")
    assert r.loss == pytest.approx(expected_nll / 2, rel=1e-5)


def test_evaluate_views_errors() -> None:
    net = MeanColourNet()
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate_views(net, [], TestTime.center(), unit, device="cpu")
    with pytest.raises(ValueError, match="label 6 is out of range for 6 classes"):
        evaluate_views(
            net, [(_colour_image((1, 2, 3), 8, 8), 6)], TestTime.center(8, 8), unit, device="cpu"
        )
