"""He et al. 2016's ablations (arXiv:1603.05027): the shortcut h(x) of Fig. 2 and the units of
Fig. 4 as CIFAR ResNet options, their parameter counts, and `cnnlab experiment
identity-mappings` end to end on a tiny folder of images.

Oracles: the defaults against golden numbers recorded before the options existed; parameter
counts worked out by hand from the stage widths; each unit against a property the paper states
(a constant-scaled unit is half the original, a closed gate gives the original unit back, ReLU
before addition makes F non-negative, ...), not against a second copy of its forward.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cnnlab.analysis.tables import option_params, options_table
from cnnlab.cli import main
from cnnlab.experiments import EXPERIMENTS, get_experiment
from cnnlab.models import registry
from cnnlab.models.identity_mappings import (
    SHORTCUT_VARIANTS,
    UNITS,
    BNAfterAdditionBlock,
    ConstantScalingBlock,
    DropoutShortcutBlock,
    ExclusiveGatingBlock,
    Gate,
    ReLUBeforeAdditionBlock,
    ReLUPreActBlock,
    ShortcutDropout,
    ShortcutOnlyGatingBlock,
)
from cnnlab.models.layers import IdentityShortcut, ProjectionShortcut
from cnnlab.models.registry import create_model, model_card
from cnnlab.models.resnet import BasicBlock, Bottleneck
from cnnlab.models.resnet_cifar import cifar_resnet

pytestmark = pytest.mark.usefixtures("one_thread")


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta(name: str, **options: object) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **options)


def units(model: nn.Module) -> list[nn.Module]:
    return [*model.layer1, *model.layer2, *model.layer3]


def state_digest(model: nn.Module) -> str:
    keys = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


# -- the defaults are today's networks ---------------------------------------------------------

# Recorded from the networks before these options existed (commit eccee0c): the state_dict's
# names and shapes (a digest) and their count; resnet20's logits in eval mode for seed 0.
GOLDEN = {
    "resnet20": ("25e2762df0032b0f", 116),
    "resnet110": ("13fb71e468b357bd", 656),
    "resnet164": ("1ec637c64da92e04", 998),
}
RESNET20_LOGITS = (0.9116153717041016, -1.6423968076705933, -0.9073572158813477)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_defaults_keep_todays_state_dict(name: str) -> None:
    default = meta(name)
    assert (state_digest(default), len(default.state_dict())) == GOLDEN[name]
    assert params(default) == model_card(name).params
    block = Bottleneck if name == "resnet164" else BasicBlock
    assert all(type(u) is block for u in units(default))
    spelled_out = meta(name, unit="original")
    assert state_digest(spelled_out) == GOLDEN[name][0]


def test_defaults_give_todays_outputs() -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    default = create_model("resnet20").eval()
    torch.manual_seed(0)
    spelled_out = create_model("resnet20", shortcut_variant="identity", unit="original").eval()
    with torch.no_grad():
        out = default(x)
        assert torch.equal(out, spelled_out(x))
    assert out[0, :3].tolist() == pytest.approx(RESNET20_LOGITS, rel=1e-5)


# -- parameter counts: by hand, on the cards' option lists, in `cnnlab models --options` --------

# ResNet-110's 54 units as (in channels, out channels): 18 per stage, the first of stages 2
# and 3 doubling the width.
RESNET110_UNITS = [(16, 16)] * 18 + [(16, 32)] + [(32, 32)] * 17 + [(32, 64)] + [(64, 64)] * 17
BASE = 1_727_962


def test_shortcut_variant_parameters_by_hand() -> None:
    assert len(RESNET110_UNITS) == 54  # "54 two-layer Residual Units" (section 3.1)
    projections = sum(i * o + 2 * o for i, o in RESNET110_UNITS)  # 1x1 conv weights and a BN
    gates = sum(i * o + o for i, o in RESNET110_UNITS)  # 1x1 conv weights and biases
    expected = {
        "identity": BASE,
        "constant-scaling": BASE,
        "exclusive-gating": BASE + gates,
        "shortcut-only-gating": BASE + gates,
        "conv1x1": BASE + projections,
        "dropout": BASE,
    }
    assert {
        v: option_params("resnet110", shortcut_variant=v) for v in SHORTCUT_VARIANTS
    } == expected
    # The module docstring's table.
    assert (expected["exclusive-gating"], expected["conv1x1"]) == (1_824_186, 1_826_202)


def test_unit_parameters() -> None:
    # Fig. 4: "All these units consist of the same components -- only the orders are different".
    for unit in UNITS[:4]:
        assert option_params("resnet110", unit=unit) == BASE
        assert option_params("resnet164", unit=unit) == 1_704_154
    # Full pre-activation is the registry's pre-activation network: the first unit has no BN
    # of its own, the last one an extra BN; on ResNet-164 the projections lose their BN.
    assert option_params("resnet110", unit="full-preact") == model_card("preact_resnet110").params
    assert option_params("resnet164", unit="full-preact") == model_card("preact_resnet164").params
    assert model_card("resnet164").params - model_card("preact_resnet164").params == 2 * (
        64 + 128 + 256
    )


def test_cards_list_the_options() -> None:
    names = {o.name: o for o in model_card("resnet110").options}
    assert names["shortcut_variant"].values == SHORTCUT_VARIANTS
    assert names["unit"].values == UNITS
    assert "Table 1" in names["shortcut_variant"].source and "Table 2" in names["unit"].source
    assert {o.name for o in model_card("resnet164").options} == {"shortcut", "unit"}
    assert model_card("resnet20").options == model_card("resnet1202").options
    assert model_card("plain110").options == ()


def test_models_options_lists_values_and_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--options", "resnet110"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def row(value: str) -> list[str]:
        found = [line.split() for line in lines if f" {value} " in f" {line} "]
        assert len(found) == 1, (value, found)
        return found[0]

    assert row("exclusive-gating")[-2:] == ["1,824,186", "+96,224"]
    assert row("conv1x1")[-2:] == ["1,826,202", "+98,240"]
    assert row("dropout")[-2:] == ["1,727,962", "+0"]
    assert row("relu-preact")[-2:] == ["1,727,962", "+0"]
    assert row("identity")[:4] == ["shortcut_variant", "identity", "(default)", "1,727,962"]
    assert row("B")[-2:] == ["1,730,714", "+2,752"]  # option B's two projections
    assert any(line.startswith("gate_bias") and "-6" in line for line in lines)
    table = options_table("resnet164")
    assert "full-preact" in table and "1,703,258" in table and "-896" in table
    assert "shortcut_variant" not in table
    assert "no options besides num_classes" in options_table("zfnet")
    assert "torchvision" in options_table("resnet18")


# -- the shortcuts of Fig. 2 -------------------------------------------------------------------


def twin(block: nn.Module, cls: type[nn.Module], shortcut: str = "A") -> nn.Module:
    """An original BasicBlock with `block`'s weights (the gate's left out)."""
    conv = block.conv1
    original = cls(conv.in_channels, block.conv2.out_channels, conv.stride[0], shortcut)
    original.load_state_dict(block.state_dict(), strict=False)
    return original.train(block.training)


def randomize_batch_norms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
            nn.init.uniform_(m.running_var, 0.5, 1.5)
            nn.init.normal_(m.running_mean)


@pytest.mark.parametrize(("in_channels", "out_channels", "stride"), [(8, 8, 1), (4, 8, 2)])
def test_constant_scaling_is_half_the_original_unit(
    in_channels: int, out_channels: int, stride: int
) -> None:
    # relu(0.5 h + 0.5 F) = 0.5 relu(h + F): ReLU commutes with a positive scale.
    torch.manual_seed(0)
    block = ConstantScalingBlock(in_channels, out_channels, stride, "A").eval()
    randomize_batch_norms(block)
    x = torch.randn(2, in_channels, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), 0.5 * twin(block, BasicBlock)(x), atol=1e-6)


@pytest.mark.parametrize(("in_channels", "out_channels", "stride"), [(8, 8, 1), (4, 8, 2)])
def test_gates_open_and_close(in_channels: int, out_channels: int, stride: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, in_channels, 8, 8)
    for cls in (ExclusiveGatingBlock, ShortcutOnlyGatingBlock):
        block = cls(in_channels, out_channels, stride, "A").eval()
        randomize_batch_norms(block)
        original = twin(block, BasicBlock)
        plain = twin(block, BasicBlock)
        plain.downsample = None  # the unit without its shortcut: relu(F(x))
        nn.init.zeros_(block.gate.conv.weight)
        with torch.no_grad():
            nn.init.constant_(block.gate.conv.bias, -100.0)  # g = 0: 1 - g = 1 on the shortcut
            if cls is ShortcutOnlyGatingBlock:
                assert torch.allclose(block(x), original(x), atol=1e-6)  # the original unit
            else:
                shortcut = original.downsample(x)
                assert torch.allclose(block(x), torch.relu(shortcut), atol=1e-6)  # F suppressed
            nn.init.constant_(block.gate.conv.bias, 100.0)  # g = 1: the shortcut closed
            assert torch.allclose(block(x), plain(x), atol=1e-6)


def test_gates_are_1x1_convs_with_their_initial_bias() -> None:
    net = create_model("resnet20", shortcut_variant="exclusive-gating")
    gates = [u.gate for u in units(net)]
    assert len(gates) == 9 and all(isinstance(g, Gate) for g in gates)
    assert all(g.conv.kernel_size == (1, 1) and g.conv.bias is not None for g in gates)
    assert all(torch.all(g.conv.bias == -6) for g in gates)  # Table 1's b_g = -6
    assert net.layer2[0].gate.conv.stride == (2, 2)  # as wide and as strided as the unit's output
    assert net.layer2[0].gate.conv.out_channels == 32
    assert net.layer1[0].gate.conv.weight.std() > 0  # He init, not zeros
    net = create_model("resnet20", shortcut_variant="shortcut-only-gating", gate_bias=0)
    assert all(torch.all(u.gate.conv.bias == 0) for u in units(net))


def test_dropout_shortcut_keeps_half_in_training_and_halves_at_test() -> None:
    # "Dropout statistically imposes a scale of lambda with an expectation of 0.5 on the
    # shortcut": values kept (not scaled by 2) in training, times 0.5 at test.
    torch.manual_seed(0)
    drop = ShortcutDropout(0.5)
    x = torch.rand(100_000) + 1
    kept = drop.train()(x)
    assert set(torch.unique(kept / x).tolist()) == {0.0, 1.0}
    assert (kept > 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(drop.eval()(x), 0.5 * x)
    block = DropoutShortcutBlock(4, 4, 1, "A").eval()
    nn.init.zeros_(block.bn2.weight)  # F = 0: the unit is relu(dropout(x))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(0.5 * x))


def test_conv1x1_is_a_projection_on_every_shortcut() -> None:
    net = meta("resnet110", shortcut_variant="conv1x1")
    shortcuts = [u.downsample for u in units(net)]
    assert all(isinstance(s, ProjectionShortcut) for s in shortcuts)  # option C: conv, BN
    assert [s[0].stride for s in shortcuts].count((2, 2)) == 2


# -- the units of Fig. 4 -----------------------------------------------------------------------


def test_bn_after_addition_normalizes_the_sum() -> None:
    torch.manual_seed(0)
    block = BNAfterAdditionBlock(8, 8, 1, "A").train()
    seen = {}
    block.conv2.register_forward_hook(lambda m, i, o: seen.__setitem__("F", o.clone()))
    block.bn2.register_forward_hook(lambda m, i, o: seen.__setitem__("bn_in", i[0].clone()))
    x = torch.randn(4, 8, 8, 8)
    out = block(x)
    assert torch.allclose(seen["bn_in"], seen["F"] + x)  # BN sees F(x) + x, after the addition
    # f = BN then ReLU: in training, each channel of the sum is normalized before the ReLU.
    normalized = (seen["bn_in"] - seen["bn_in"].mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        seen["bn_in"].var((0, 2, 3), unbiased=False, keepdim=True) + block.bn2.eps
    )
    assert torch.allclose(out, torch.relu(normalized), atol=1e-5)


def test_relu_before_addition_makes_the_residual_non_negative() -> None:
    torch.manual_seed(0)
    block = ReLUBeforeAdditionBlock(8, 8, 1, "A").train()
    x = torch.randn(4, 8, 8, 8)
    residual = block(x) - x
    assert residual.min() >= 0 and residual.max() > 0  # F in [0, inf) (section 4.1)
    assert block(x).min() < 0  # nothing after the addition: negative inputs pass through


def test_relu_preact_unit_sees_its_input_through_a_relu_only() -> None:
    # x_next = x + F(relu(x)): the residual depends on x only through relu(x), and nothing
    # follows the addition.
    torch.manual_seed(0)
    block = ReLUPreActBlock(8, 8, 1, "A").eval()
    randomize_batch_norms(block)
    x = torch.randn(2, 8, 8, 8)
    before = x.clone()
    with torch.no_grad():
        assert torch.allclose(block(x) - x, block(torch.relu(x)) - torch.relu(x), atol=1e-6)
        assert block(x).min() < 0
    assert torch.equal(x, before)  # the input is not changed in place
    downsampling = ReLUPreActBlock(4, 8, 2, "A")
    assert not isinstance(downsampling.downsample, IdentityShortcut)


def test_relu_preact_net_ends_in_a_relu() -> None:
    net = create_model("resnet20", unit="relu-preact").train()
    pooled = {}
    net.avgpool.register_forward_hook(lambda m, i, o: pooled.__setitem__("in", i[0]))
    net(torch.randn(2, 3, 32, 32))
    assert pooled["in"].min() >= 0  # the last unit's extra activation (appendix)
    assert all(type(u) is ReLUPreActBlock for u in units(net))


@pytest.mark.parametrize(("name", "preact"), [("resnet110", "preact_resnet110"),
                                              ("resnet164", "preact_resnet164")])  # fmt: skip
def test_full_preact_is_the_registered_preact_network(name: str, preact: str) -> None:
    torch.manual_seed(0)
    ours = meta(name, unit="full-preact")
    assert state_digest(ours) == state_digest(meta(preact))
    assert type(ours).__name__ == "PreActCifarResNet"


def test_full_preact_gives_the_preact_networks_outputs() -> None:
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    ours = cifar_resnet(1, shortcut="B", unit="full-preact", bottleneck=True).eval()
    torch.manual_seed(0)
    from cnnlab.models.preact_resnet import PreActBottleneck, PreActCifarResNet

    theirs = PreActCifarResNet(PreActBottleneck, 1, shortcut="B").eval()
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


# -- every variant trains: a small net of each, forward and backward ---------------------------


VARIANTS = [
    *({"shortcut_variant": v} for v in SHORTCUT_VARIANTS),
    *({"unit": u} for u in UNITS),
    *({"unit": u, "bottleneck": True} for u in UNITS),
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(map(str, o.values())))
def test_small_variants_run_and_backpropagate(options: dict[str, object]) -> None:
    torch.manual_seed(0)
    shortcut = "B" if options.get("bottleneck") else "A"
    net = cifar_resnet(1, shortcut=shortcut, **options).train()
    out = net(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if "gating" in str(options.get("shortcut_variant")):
        assert net.layer2[0].gate.conv.weight.grad.abs().sum() > 0


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="set one of them"):
        create_model("resnet110", shortcut_variant="dropout", unit="full-preact")
    with pytest.raises(ValueError, match="gate_bias is the initial bias of the gates"):
        create_model("resnet20", gate_bias=-6)
    with pytest.raises(ValueError, match="does not take option.*shortcut_variant"):
        create_model("resnet164", shortcut_variant="dropout")
    with pytest.raises(ValueError, match="'identity', 'constant-scaling'"):
        create_model("resnet20", shortcut_variant="gating")
    with pytest.raises(ValueError, match="'original', 'bn-after-addition'"):
        create_model("resnet20", unit="preact")
    with pytest.raises(ValueError, match="bottleneck net takes `unit` only"):
        cifar_resnet(1, shortcut="B", shortcut_variant="conv1x1", bottleneck=True)


# -- the experiment ----------------------------------------------------------------------------

# He et al. 2016, Tables 1 and 2, as read from the paper's text (see definitions.py).
PAPER = {
    "resnet110": 6.61,
    "resnet110-constant-scaling": 12.35,
    "resnet110-exclusive-gating": 8.70,
    "resnet110-shortcut-only-gating": 6.91,
    "resnet110-shortcut-only-gating-0": 12.86,
    "resnet110-conv1x1": 12.22,
    "resnet110-dropout": None,  # "fail"
    "resnet110-bn-after-addition": 8.17,
    "resnet110-relu-before-addition": 7.84,
    "resnet110-relu-preact": 6.71,
    "resnet110-full-preact": 6.37,
    "resnet164": 5.93,
    "resnet164-bn-after-addition": 6.50,
    "resnet164-relu-before-addition": 6.14,
    "resnet164-relu-preact": 5.91,
    "resnet164-full-preact": 5.46,
}


def test_definition_holds_the_papers_tables() -> None:
    exp = get_experiment("identity-mappings")
    assert EXPERIMENTS["identity-mappings"] is exp
    assert [r.name for r in exp.runs] == list(PAPER)
    for run in exp.runs:
        paper = run.paper()
        assert (paper.value if paper else None) == PAPER[run.name], run.name
        shortcut = any(option == "shortcut_variant" for option, _ in run.options)
        table = (
            "Tables 1 and 2" if run.name == "resnet110" else "Table 1" if shortcut else "Table 2"
        )
        if paper is not None:
            assert paper.source.startswith(f"He et al. 2016, {table}"), run.name
    assert exp.run("resnet110-dropout").note.startswith("fail: above 20%")
    assert exp.run("resnet110-shortcut-only-gating-0").options[1] == ("gate_bias", 0)
    for run in exp.runs:  # every run builds with its options
        meta(run.model, **dict(run.options))
    # the orderings of the tables, each on the paper's own numbers
    for claim in exp.claims:
        if claim.metric == "test" and PAPER[claim.run] and PAPER[claim.other]:
            a, b = PAPER[claim.run], PAPER[claim.other]
            assert (a < b) == (claim.relation == "lower"), claim
    assert len(exp.claims) == 17


def tiny_builder(bottleneck: bool) -> Callable[..., nn.Module]:
    """A 1-unit-per-stage stand-in for resnet110 / resnet164, taking the same options."""

    def build(
        num_classes: int = 10,
        shortcut: str = "B" if bottleneck else "A",
        shortcut_variant: str = "identity",
        gate_bias: float | None = None,
        unit: str = "original",
    ) -> nn.Module:
        return cifar_resnet(1, num_classes, shortcut, shortcut_variant, unit, gate_bias, bottleneck)

    return build


def test_experiment_end_to_end(
    tiny_image_folder: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real definition, its networks swapped for 1-unit-per-stage ones, 2 steps each."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(registry._BUILDERS, "resnet110", tiny_builder(False))
    monkeypatch.setitem(registry._BUILDERS, "resnet164", tiny_builder(True))
    data = tiny_image_folder(classes=tuple(f"c{k}" for k in range(10)), counts={"train": 2,
                             "test": 1}).path  # fmt: skip
    out = tmp_path / "exp"
    args = ["experiment", "identity-mappings", "--data", str(data), "--out", str(out)]
    quick = ["--steps", "2", "--batch-size", "8", "--limit-train", "16", "--seeds", "1", "-q"]
    assert main([*args, *quick]) == 0
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| run |")))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    assert list(rows) == list(PAPER)
    for name, value in PAPER.items():
        paper, ours = rows[name][0], rows[name][1]
        if value is None:
            assert paper == "fail: above 20% (He et al. 2016, Table 1)"
        else:
            assert paper.startswith(f"{value:.2f} (He et al. 2016, Table")
        assert float(ours) >= 0  # our error, from the run folder
    assert rows["resnet110-exclusive-gating"][0] == "8.70 (He et al. 2016, Table 1, init b_g = -6)"
    assert rows["resnet164-full-preact"][0] == "5.46 (He et al. 2016, Table 2)"
    findings = [line for line in lines if line.startswith("- resnet")]
    assert len(findings) == 17
    assert all(" held at this budget" in f or "did not hold" in f for f in findings)
    assert "the identity shortcut beats every other h(x) (He et al. 2016, Table 1)" in text
    assert "full pre-activation improves on the original unit" in text
    assert "medians of 5 runs" in text and "-O gate_bias=-7" in text
    assert (out / "curves.png").exists()
    config = (out / "runs" / "resnet110-shortcut-only-gating-0-s0" / "config.json").read_text()
    assert '"gate_bias": 0' in config
