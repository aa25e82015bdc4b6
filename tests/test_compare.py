"""`cnnlab compare` and `cnnlab.compare`: the papers' hand calculations as oracles.

Every figure comes from `profile` on the meta device, as the command line computes it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import cnnlab
from cnnlab.analysis.comparison import CONV_STACK_INPUT, conv_stack
from cnnlab.cli import main
from cnnlab.models.googlenet import INCEPTION
from cnnlab.options import parse_options, parse_spec

# --- specs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("vgg19", ("vgg19", {})),
        ("googlenet:factorize=5x5", ("googlenet", {"factorize": "5x5"})),
        ("resnet18:layout=torchvision,num_classes=10",
         ("resnet18", {"layout": "torchvision", "num_classes": 10})),
        # a comma not followed by KEY= belongs to a tuple value
        ("conv_stack:kernels=3,3,3,channels=32",
         ("conv_stack", {"kernels": (3, 3, 3), "channels": 32})),
        ("conv_stack:kernels=1x3,3x1", ("conv_stack", {"kernels": ("1x3", "3x1")})),
    ],
)  # fmt: skip
def test_parse_spec(spec: str, parsed: tuple[str, dict[str, object]]) -> None:
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (":factorize=5x5", "has no model name"),
        ("googlenet:5x5", "in model spec 'googlenet:5x5', option '5x5' is not KEY=VALUE"),
        ("googlenet:", "option '' is not KEY=VALUE"),
    ],
)
def test_parse_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_parse_options_still_reachable_from_the_trainer() -> None:
    from cnnlab.train import parse_options as from_train

    assert from_train is parse_options
    assert parse_options(["shortcut=B", "scale_range=256,480", "flip=true"]) == {
        "shortcut": "B", "scale_range": (256, 480), "flip": True
    }  # fmt: skip


def test_measuring_never_imports_the_trainer() -> None:
    code = (
        "import sys, cnnlab.analysis; cnnlab.analysis.compare(['resnet20', 'conv_stack']); "
        "print(sorted(m for m in sys.modules if m.startswith('cnnlab.train')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- the layer-level arguments ----------------------------------------------------------------


@pytest.mark.parametrize("c", [64, 32])
def test_three_3x3_against_one_7x7(c: int) -> None:
    # Simonyan & Zisserman 2014, section 2.3: a stack of three 3x3 convs at C channels has
    # 3 (3^2 C^2) = 27 C^2 weights, one 7x7 conv 7^2 C^2 = 49 C^2; both see 7x7.
    specs = [f"conv_stack:kernels=7,channels={c}", f"conv_stack:kernels=3,3,3,channels={c}"]
    one, three = cnnlab.compare(specs).rows
    assert (one.params, three.params) == (49 * c * c, 27 * c * c)
    assert one.receptive_field == three.receptive_field == 7
    assert one.stride == three.stride == 1
    side = CONV_STACK_INPUT
    assert (one.macs, three.macs) == (side * side * 49 * c * c, side * side * 27 * c * c)
    assert three.params_ratio == three.macs_ratio == pytest.approx(27 / 49)
    assert one.params_ratio == one.macs_ratio == 1


def test_5x5_as_two_3x3_is_25_to_18() -> None:
    # Szegedy et al. 2015, section 3.1: at equal widths, 9 + 9 against 25 weights per channel
    # pair, "a relative gain of 28%"; the receptive field stays 5.
    c = 64
    five, two = cnnlab.compare(["conv_stack:kernels=5", "conv_stack:kernels=3,3"]).rows
    assert (five.params, two.params) == (25 * c * c, 18 * c * c)
    assert two.macs_ratio == pytest.approx(18 / 25) == 1 - 0.28
    assert five.receptive_field == two.receptive_field == 5


def test_3x3_as_1x3_then_3x1_is_9_to_6() -> None:
    # Szegedy et al. 2015, section 3.2: "the two-layer solution is 33% cheaper".
    square, asym = cnnlab.compare(
        ["conv_stack:kernels=3,channels=16", "conv_stack:kernels=1x3,3x1,channels=16"]
    ).rows
    assert (square.params, asym.params) == (9 * 16 * 16, 6 * 16 * 16)
    assert asym.params_ratio == pytest.approx(2 / 3)
    assert square.receptive_field == asym.receptive_field == 3


def test_conv_stack_is_what_it_says() -> None:
    stack = conv_stack(("1x3", 5), channels=8)
    convs = [m for m in stack if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 3), (5, 5)]
    assert [c.padding for c in convs] == [(0, 1), (2, 2)]
    assert all(c.bias is None and c.in_channels == c.out_channels == 8 for c in convs)
    assert sum(isinstance(m, nn.ReLU) for m in stack) == 2
    assert "conv_stack" not in cnnlab.list_models()  # not a paper's network: no card


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernels": 4}, "kernel 4 is not an odd side"),
        ({"kernels": "3x2"}, "kernel '3x2' is not an odd side"),
        ({"kernels": ()}, "at least one kernel"),
        ({"channels": 0}, "channels=0 is not a positive whole number"),
    ],
)
def test_conv_stack_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        conv_stack(**options)


# --- the networks -----------------------------------------------------------------------------


def test_googlenet_factorized_5x5_saves_the_hand_sum_over_table_1() -> None:
    base, five, asym = cnnlab.compare(
        ["googlenet", "googlenet:factorize=5x5", "googlenet:factorize=asymmetric"]
    ).rows
    # Per module, the 5x5 r -> o (25 r o + o biases) becomes 3x3 r -> r and 3x3 r -> o.
    by_hand = sum(
        (25 * w.ch5x5red * w.ch5x5 + w.ch5x5)
        - (9 * w.ch5x5red**2 + w.ch5x5red + 9 * w.ch5x5red * w.ch5x5 + w.ch5x5)
        for w in INCEPTION.values()
    )
    assert base.params - five.params == by_hand == 308_096
    assert (base.params, five.params, asym.params) == (13_378_280, 13_070_184, 12_241_640)
    assert (base.macs, five.macs, asym.macs) == (1_582_671_872, 1_514_971_904, 1_352_401_664)
    assert base.macs == cnnlab.model_card("googlenet").macs
    # The factorisations keep every receptive field: 5a, 5b's widest branch sees 715 pixels.
    assert base.receptive_field == five.receptive_field == asym.receptive_field == 715
    assert base.stride == five.stride == asym.stride == 32


def test_resnet34_at_18_percent_of_vgg19() -> None:
    # He et al. 2015, section 3.3: ResNet-34 "has 3.6 billion FLOPs (multiply-adds), which is
    # only 18% of VGG-19 (19.6 billion FLOPs)". Measured: 3.66 and 19.63 billion, 18.7%.
    vgg, resnet = cnnlab.compare(["vgg19", "resnet34"]).rows
    assert (vgg.macs, resnet.macs) == (
        cnnlab.model_card("vgg19").macs, cnnlab.model_card("resnet34").macs
    )  # fmt: skip
    assert vgg.macs / 1e9 == pytest.approx(19.6, abs=0.05)
    assert resnet.macs / 1e9 == pytest.approx(3.6, abs=0.1)
    assert resnet.macs_ratio == resnet.macs / vgg.macs
    assert resnet.macs_ratio == pytest.approx(3.6 / 19.6, abs=0.005)
    assert 0.18 < resnet.macs_ratio < 0.19
    assert (vgg.receptive_field, vgg.stride) == (252, 16)  # conv5_4


def test_input_size_applies_to_all() -> None:
    rows = cnnlab.compare(["resnet20", "resnet56"], input_size=64).rows
    assert [r.input_size for r in rows] == [64, 64]
    # The convs work on 4x the 32x32 maps; the fc (64 -> 10) after global pooling does not.
    fc = 64 * 10
    assert rows[0].macs == 4 * (cnnlab.model_card("resnet20").macs - fc) + fc


def test_no_specs_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one model spec"):
        cnnlab.compare([])


# --- the command line -------------------------------------------------------------------------


def test_cli_compare_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "vgg19", "resnet34"]) == 0
    out = capsys.readouterr().out
    resnet = next(line for line in out.splitlines() if line.startswith("resnet34 "))
    for cell in ("224x224", "21,797,672", "x0.152", "3,663,761,408", "x0.187", "899", "32"):
        assert cell in resnet.split()
    assert "ratios to vgg19" in out


def test_cli_compare_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "conv_stack:kernels=7", "conv_stack:kernels=3,3,3", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["spec"] for r in rows] == argv[1:3]
    assert [r["params"] for r in rows] == [49 * 64 * 64, 27 * 64 * 64]
    assert [r["receptive_field"] for r in rows] == [7, 7]


def test_cli_summary_takes_model_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "googlenet", "-O", "factorize=asymmetric"]) == 0
    out = capsys.readouterr().out
    assert "12,241,640 parameters" in out
    assert "1x3/1" in out and "3x1/1" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "googlenet", "googlenet:factorize=7x7"], "factorize='7x7' is not valid"),
        (["compare", "googlenet:5x5"], "option '5x5' is not KEY=VALUE"),
        (["compare", "conv_stak"], "unknown model 'conv_stak'"),
        (["compare", "conv_stack:kernel=3"], "conv_stack does not take option(s) kernel"),
        (["compare", "vgg19", "alexnet", "--input-size", "32"], "smallest input that works"),
        (["summary", "googlenet", "-O", "factorize"], "model option 'factorize' is not KEY=VALUE"),
        (["summary", "googlenet", "-O", "factorize=5x5", "-O", "layout=torchvision"],
         "use it with layout='paper'"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_readme_compare_output_is_the_tools(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```\n\$ cnnlab (compare [^\n]+)\n(.*?)```", readme, flags=re.S)
    assert len(blocks) == 4
    for command, shown in blocks:
        assert main(command.split()) == 0
        assert capsys.readouterr().out == shown, f"README's `cnnlab {command}` is stale"
