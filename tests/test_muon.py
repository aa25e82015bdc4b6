"""Muon (cnnlab.train.muon): the orthogonalisation against an SVD, the SGD groups against
torch.optim.SGD, the filter step against its formula, and what make_optimizer builds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.models.registry import create_model
from cnnlab.train import FAST
from cnnlab.train.muon import Muon, orthogonalize
from cnnlab.train.step import make_optimizer


def _polar(m: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(m.double(), full_matrices=False)
    return (u @ vh).float()


@pytest.mark.parametrize("shape", [(16, 27), (64, 576), (32, 16), (10, 10)])
def test_orthogonalize_is_near_the_polar_factor(shape: tuple[int, int]) -> None:
    m = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    o = orthogonalize(m)
    assert o.shape == m.shape
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.6 and s.max() < 1.25  # Jordan et al.'s iteration: roughly 0.7 to 1.2
    polar = _polar(m)
    assert torch.nn.functional.cosine_similarity(o.flatten(), polar.flatten(), dim=0) > 0.97
    # The singular vectors are m's: o^T m is symmetric positive semi-definite (o = U S' V^T).
    gram = (o.T @ m).double() if shape[0] >= shape[1] else (m @ o.T).double()
    torch.testing.assert_close(gram, gram.T, rtol=1e-3, atol=1e-3)
    assert torch.linalg.eigvalsh(gram).min() > -1e-3


def test_orthogonalize_is_scale_free_and_refuses_non_matrices() -> None:
    m = torch.randn(8, 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(orthogonalize(m), orthogonalize(1000 * m), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.randn(20))


@pytest.mark.parametrize("shape", [(16, 27), (64, 576), (32, 16)])
def test_a_stack_is_orthogonalised_matrix_by_matrix(shape: tuple[int, int]) -> None:
    # Each matrix on its own scale: a stack normalised as a whole would shrink the small one.
    g = torch.Generator().manual_seed(2)
    stack = torch.randn(3, *shape, generator=g) * torch.tensor([1.0, 100.0, 0.01]).view(3, 1, 1)
    one_by_one = torch.stack([orthogonalize(m) for m in stack])
    torch.testing.assert_close(orthogonalize(stack), one_by_one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(orthogonalize(stack[0]), one_by_one[0], rtol=1e-4, atol=1e-5)


def test_filter_banks_of_several_shapes_step_as_each_alone() -> None:
    # The step stacks the banks of one shape; each must move as it would in a group of its own.
    torch.manual_seed(0)
    shapes = [(8, 4, 3, 3), (16, 8, 3, 3), (8, 4, 3, 3), (16, 8, 1, 1), (8, 4, 3, 3)]
    together = [nn.Parameter(torch.randn(s)) for s in shapes]
    alone = [nn.Parameter(p.detach().clone()) for p in together]
    lr = torch.tensor(0.2)
    ours = Muon([{"params": together, "orthogonal": True}], lr=lr, nesterov=True)
    each = [Muon([{"params": [p], "orthogonal": True}], lr=lr, nesterov=True) for p in alone]
    for step in range(3):
        _grads(together, step)
        for p, q in zip(alone, together, strict=True):
            p.grad = q.grad.clone()
        ours.step()
        for opt in each:
            opt.step()
    for p, q in zip(together, alone, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def _grads(params: list[nn.Parameter], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("nesterov", [False, True])
def test_plain_groups_step_as_torch_sgd(nesterov: bool) -> None:
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
    b = [nn.Parameter(p.detach().clone()) for p in a]
    lr = torch.tensor(0.3)
    ours = Muon([{"params": a[:1], "weight_decay": 0.01}, {"params": a[1:]}], lr=lr,
                momentum=0.9, nesterov=nesterov)  # fmt: skip
    theirs = torch.optim.SGD([{"params": b[:1], "weight_decay": 0.01}, {"params": b[1:]}],
                             lr=0.3, momentum=0.9, nesterov=nesterov)  # fmt: skip
    for step in range(4):
        _grads(a, step)
        _grads(b, step)
        ours.step()
        theirs.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q)


def test_filter_step_normalises_then_moves_by_the_orthogonalised_momentum() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(3 * torch.randn(8, 4, 3, 3))
    lr = torch.tensor(0.1)
    opt = Muon([{"params": [w], "orthogonal": True, "lr_scale": 0.5}], lr=lr, momentum=0.9,
               nesterov=True)  # fmt: skip
    grads = [torch.randn(8, 4, 3, 3) for _ in range(3)]
    expected = w.detach().clone()
    buf = torch.zeros_like(expected)
    for i, g in enumerate(grads):
        w.grad = g.clone()
        opt.step()
        buf = g.clone() if i == 0 else 0.9 * buf + g
        expected = expected * (8**0.5 / expected.norm())
        expected = expected - 0.05 * orthogonalize((g + 0.9 * buf).reshape(8, -1)).view(8, 4, 3, 3)
        torch.testing.assert_close(w.detach(), expected)
    # The learning rate is read from the tensor at each step: 0 leaves only the normalisation.
    lr.fill_(0.0)
    w.grad = grads[0].clone()
    opt.step()
    torch.testing.assert_close(w.detach().norm(), torch.tensor(8**0.5))
    with pytest.raises(ValueError, match="weight decay"):
        Muon([{"params": [w], "orthogonal": True, "weight_decay": 1e-4}], lr=0.1)


def test_channels_last_filters_step_as_contiguous_ones() -> None:
    # cnnlab trains in channels_last where faster: the banks' memory order must not matter.
    torch.manual_seed(0)
    shapes = [(8, 4, 3, 3), (8, 4, 3, 3), (16, 8, 3, 3)]
    plain = [nn.Parameter(torch.randn(s)) for s in shapes]
    nhwc = [nn.Parameter(p.detach().clone().to(memory_format=torch.channels_last)) for p in plain]
    opts = [
        Muon([{"params": ps, "orthogonal": True}], lr=0.1, nesterov=True) for ps in (plain, nhwc)
    ]
    for step in range(2):
        _grads(plain, step)
        for p, q in zip(nhwc, plain, strict=True):
            p.grad = q.grad.clone().to(memory_format=torch.channels_last)
        for opt in opts:
            opt.step()
    for p, q in zip(plain, nhwc, strict=True):
        torch.testing.assert_close(p.detach(), q.detach().contiguous())


def test_make_optimizer_gives_the_filters_muon_and_the_rest_sgd() -> None:
    net = create_model("resnet20")
    lr = torch.tensor(0.0)
    recipe = FAST.replace(optimizer="muon", muon_lr=0.02)
    opt = make_optimizer(net, recipe, lr)
    assert isinstance(opt, Muon)
    filters, decayed, free = opt.param_groups
    convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and {id(p) for p in filters["params"]} == {id(p) for p in convs}
    assert filters["orthogonal"] and filters["lr_scale"] == pytest.approx(0.02 / FAST.lr)
    assert [id(p) for p in decayed["params"]] == [id(net.fc.weight)]
    assert decayed["weight_decay"] == FAST.weight_decay and free["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in free["params"])
    total = sum(len(g["params"]) for g in opt.param_groups)
    assert total == len(list(net.parameters()))
    assert all(g["lr"] is lr for g in opt.param_groups)
    assert all(g["momentum"] == FAST.momentum for g in opt.param_groups)
    assert isinstance(make_optimizer(net, FAST.replace(optimizer="sgd"), lr), torch.optim.SGD)
    own = make_optimizer(net, recipe.replace(muon_momentum=0.6), lr).param_groups
    assert [g["momentum"] for g in own] == [0.6, FAST.momentum, FAST.momentum]
    # Without muon_first_conv the first convolution joins the decayed SGD group.
    filters, decayed, _ = make_optimizer(
        net, recipe.replace(muon_first_conv=False), lr
    ).param_groups
    assert {id(p) for p in filters["params"]} == {id(p) for p in convs[1:]}
    assert convs[0] is net.conv1.weight
    assert {id(p) for p in decayed["params"]} == {id(net.conv1.weight), id(net.fc.weight)}


def test_bn_bias_lr_scale_gives_batch_norm_shifts_a_group_of_their_own() -> None:
    net = create_model("resnet20")
    lr = torch.tensor(0.0)
    groups = make_optimizer(net, FAST.replace(bn_bias_lr_scale=8.0), lr).param_groups
    filters, decayed, free, shifts = groups
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 19
    assert [id(p) for p in shifts["params"]] == [id(m.bias) for m in norms]
    assert shifts["lr_scale"] == 8.0 and shifts["weight_decay"] == 0.0
    assert {id(p) for p in free["params"]} == {id(m.weight) for m in norms} | {id(net.fc.bias)}
    assert free["lr_scale"] == 1.0 and decayed["lr_scale"] == 1.0
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    # Weight decay on the batch norms too: the shifts keep it in their own group.
    decayed, shifts = make_optimizer(
        net, FAST.replace(optimizer="sgd", decay_norm_and_bias=True, bn_bias_lr_scale=2.0), lr
    ).param_groups
    assert shifts["weight_decay"] == decayed["weight_decay"] == FAST.weight_decay
    assert len(shifts["params"]) == 19


def test_head_lr_scale_gives_the_last_layer_a_group_of_its_own() -> None:
    net = create_model("resnet20")
    lr = torch.tensor(0.0)
    recipe = FAST.replace(head_lr_scale=0.25, bn_bias_lr_scale=8.0)
    scales = {
        id(p): g["lr_scale"]
        for g in make_optimizer(net, recipe, lr).param_groups
        for p in g["params"]
    }
    assert scales[id(net.fc.weight)] == scales[id(net.fc.bias)] == 0.25
    assert scales[id(net.bn1.bias)] == 8.0 and scales[id(net.bn1.weight)] == 1.0
    assert scales[id(net.conv1.weight)] == pytest.approx(FAST.muon_lr / FAST.lr)
    assert len(scales) == len(list(net.parameters()))
    bare = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match="head_lr_scale.*no"):
        make_optimizer(bare, FAST.replace(head_lr_scale=0.5), lr)


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
@pytest.mark.parametrize("option", ["bn_bias_lr_scale", "head_lr_scale"])
def test_lr_scales_move_their_parameters_that_many_times_as_far(
    optimizer: str, option: str
) -> None:
    def one_step(scale: float) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.Flatten(), nn.Linear(4 * 6 * 6, 3))  # fmt: skip
        before = [p.detach().clone() for p in net.parameters()]
        recipe = FAST.replace(optimizer=optimizer, **{option: scale})
        opt = make_optimizer(net, recipe, torch.tensor(0.1))
        assert isinstance(opt, Muon) == (optimizer == "muon" or scale != 1)
        x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 0, 1])).backward()
        opt.step()
        return [p.detach() - b for p, b in zip(net.parameters(), before, strict=True)]

    plain, scaled = one_step(1.0), one_step(4.0)
    conv, bn_weight, bn_bias, fc_weight, fc_bias = range(5)
    moved = [bn_bias] if option == "bn_bias_lr_scale" else [fc_weight, fc_bias]
    for i in range(5):
        assert plain[i].abs().max() > 0
        torch.testing.assert_close(scaled[i], 4 * plain[i] if i in moved else plain[i])


def test_auto_gives_muon_where_batch_norm_follows_the_filters_and_sgd_elsewhere() -> None:
    lr = torch.tensor(0.0)
    assert FAST.optimizer == "auto"
    normalized = make_optimizer(create_model("resnet20"), FAST, lr)
    assert isinstance(normalized, Muon) and len(normalized.param_groups[0]["params"]) == 19
    assert normalized.param_groups[0]["lr_scale"] == pytest.approx(FAST.muon_lr / FAST.lr)
    bare = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    assert isinstance(make_optimizer(bare, FAST, lr), torch.optim.SGD)
    dense = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    assert isinstance(make_optimizer(dense, FAST, lr), torch.optim.SGD)


def test_muon_without_batch_norm_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match="batch norm.*use optimizer sgd"):
        make_optimizer(net, FAST.replace(optimizer="muon"), torch.tensor(0.1))
