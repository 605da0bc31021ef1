"""Optimisers and per-group L2 weight decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emseg.training._optim import build_optimizer, parameter_groups


class TwoPart(nn.Module):
    """A tiny stand-in for the hybrid network: named parameter groups."""

    def __init__(self) -> None:
        super().__init__()
        self.part2d = nn.Conv2d(1, 2, 3)
        self.part3d = nn.Conv3d(1, 2, 3)
        self.head = nn.Conv2d(2, 3, 1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"2d": list(self.part2d.parameters()), "3d": list(self.part3d.parameters()),
                "heads": list(self.head.parameters())}


def _decay_by_param(optimizer):
    return {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}


def test_group_weight_decay_and_global_default():
    model = TwoPart()
    opt = build_optimizer(model, name="adam", learning_rate=1e-3, weight_decay=1e-5,
                          weight_decay_groups={"3d": 1e-3, "heads": 0.0})
    decay = _decay_by_param(opt)
    assert all(decay[id(p)] == 1e-3 for p in model.part3d.parameters())
    assert all(decay[id(p)] == 0.0 for p in model.head.parameters())
    assert all(decay[id(p)] == 1e-5 for p in model.part2d.parameters())  # not listed -> global
    assert len(decay) == sum(1 for _ in model.parameters())  # every parameter exactly once


def test_group_decay_acts_as_l2_on_the_gradient():
    # SGD without momentum: p <- p - lr (grad + wd p); with zero gradient p shrinks by (1 - lr wd)
    model = TwoPart()
    opt = build_optimizer(model, name="sgd", learning_rate=0.1, weight_decay=0.0, weight_decay_groups={"heads": 0.5},
                          momentum=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        factor = 0.95 if name.startswith("head") else 1.0
        assert torch.allclose(p, before[name] * factor)


def test_unknown_group_lists_the_models_groups():
    with pytest.raises(ValueError, match=r"'heds'.*Did you mean 'heads'.*Its groups: 2d, 3d, heads"):
        parameter_groups(TwoPart(), weight_decay=0.0, groups={"heds": 1e-4})
    with pytest.raises(ValueError, match="param_groups"):
        parameter_groups(nn.Linear(2, 2), weight_decay=0.0, groups={"2d": 1e-4})


def test_optimizer_kinds():
    model = nn.Linear(2, 2)
    assert isinstance(build_optimizer(model, name="radam", learning_rate=1e-3, weight_decay=0.0), torch.optim.RAdam)
    sgd = build_optimizer(model, name="sgd", learning_rate=1e-2, weight_decay=0.0, momentum=0.9, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["nesterov"] is True
    adam = build_optimizer(model, name="adam", learning_rate=1e-3, weight_decay=1e-5)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 1e-5
    with pytest.raises(ValueError, match="Did you mean 'adam'"):
        build_optimizer(model, name="adan", learning_rate=1e-3, weight_decay=0.0)
