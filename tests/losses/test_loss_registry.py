"""Registered losses against hand-worked values; unlabelled pixels never contribute."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from emseg.data import IGNORE_INDEX
from emseg.losses import LOSSES, MultiHeadLoss, build_loss

LN3 = math.log(3.0)
I = IGNORE_INDEX

# The hand-worked 2-class example used throughout: three pixels in one row.
#   A: logits (ln 3, 0) -> p = (3/4, 1/4), target 0   -> CE = -ln(3/4) = ln(4/3) = 0.287682
#   B: logits (0, 0)    -> p = (1/2, 1/2), target 1   -> CE = ln 2 = 0.693147
#   C: arbitrary logits, target IGNORE_INDEX           -> must not matter
TARGET = torch.tensor([[[0, 1, I]]])  # (N=1, Y=1, X=3)


def _logits(*pixels: tuple[float, ...]) -> torch.Tensor:
    """Pixels given as per-class logit tuples -> (N=1, C, Y=1, X=P)."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, len(pixels[0]), 1, len(pixels))


def _abc(c=(9.0, -9.0)) -> torch.Tensor:
    return _logits((LN3, 0.0), (0.0, 0.0), c)


def _call(loss, logits, target, weight_map=None):
    return float(loss(logits, target, weight_map=weight_map))


# ---------------------------------------------------------------- hand-worked values

def test_ce_hand_value():
    # mean over labelled pixels: (0.287682 + 0.693147) / 2 = 0.490415
    assert _call(build_loss({"ce": 1.0}, num_classes=2), _abc(), TARGET) == pytest.approx(0.490415, abs=1e-5)


def test_ce_class_weights_hand_value():
    # torch weighted mean, w = (1, 3): (1 * 0.287682 + 3 * 0.693147) / (1 + 3) = 2.367123 / 4 = 0.591781
    spec = {"ce": {"class_weights": [1.0, 3.0]}}
    assert _call(build_loss(spec, num_classes=2), _abc(), TARGET) == pytest.approx(0.591781, abs=1e-5)
    # build_loss's class_weights reach 'ce' when its spec has none
    assert _call(build_loss({"ce": 1.0}, num_classes=2, class_weights=[1.0, 3.0]), _abc(), TARGET) == pytest.approx(
        0.591781, abs=1e-5)


def test_weighted_ce_hand_value():
    # W = (2, 0.5, 7 at the ignored pixel): (2 * 0.287682 + 0.5 * 0.693147) / 2 labelled pixels
    #   = (0.575364 + 0.346574) / 2 = 0.460969
    w = torch.tensor([[[2.0, 0.5, 7.0]]])
    loss = build_loss({"weighted_ce": 1.0}, num_classes=2)
    assert loss.requires_weight_map
    assert _call(loss, _abc(), TARGET, w) == pytest.approx(0.460969, abs=1e-5)
    # all-ones map = plain cross-entropy
    assert _call(loss, _abc(), TARGET, torch.ones(1, 1, 3)) == pytest.approx(0.490415, abs=1e-5)
    # NaN at an ignored pixel is never read
    assert _call(loss, _abc(), TARGET, torch.tensor([[[2.0, 0.5, float("nan")]]])) == pytest.approx(0.460969, abs=1e-5)


def test_weighted_ce_without_map_says_what_to_do():
    with pytest.raises(ValueError, match="weight_map"):
        build_loss({"weighted_ce": 1.0}, num_classes=2)(_abc(), TARGET)


def test_focal_hand_value():
    # alpha = 0.25 with 2 classes -> factors (1 - 0.25, 0.25) = (0.75, 0.25); gamma = 2:
    #   A: p_t = 3/4: 0.75 * (1/4)^2 * ln(4/3) = 0.75 * 0.0625 * 0.287682 = 0.013485
    #   B: p_t = 1/2: 0.25 * (1/2)^2 * ln 2    = 0.25 * 0.25   * 0.693147 = 0.043322
    #   mean over the 2 labelled pixels = 0.028403
    assert _call(build_loss({"focal": 1.0}, num_classes=2), _abc(), TARGET) == pytest.approx(0.028403, abs=1e-5)


def test_focal_multiclass_alpha_convention():
    # 3 classes, scalar alpha 0.25 -> factors (0.75, 0.25, 0.25). One pixel, logits (0, 0, 0), target 2:
    #   p_t = 1/3: 0.25 * (2/3)^2 * ln 3 = 0.25 * 0.444444 * 1.098612 = 0.122068
    logits, target = _logits((0.0, 0.0, 0.0)), torch.tensor([[[2]]])
    assert _call(build_loss({"focal": 1.0}, num_classes=3), logits, target) == pytest.approx(0.122068, abs=1e-5)
    # same pixel with target 0 (background): 0.75 * 0.444444 * 1.098612 = 0.366204
    assert _call(build_loss({"focal": 1.0}, num_classes=3), logits, torch.tensor([[[0]]])) == pytest.approx(
        0.366204, abs=1e-5)
    # a per-class list: factor 2.0 for class 2 -> 2 * 0.444444 * 1.098612 = 0.976544
    spec = {"focal": {"alpha": [1.0, 1.0, 2.0]}}
    assert _call(build_loss(spec, num_classes=3), logits, target) == pytest.approx(0.976544, abs=1e-5)


def test_focal_gamma_zero_is_alpha_weighted_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 4, 5, generator=g)
    target = torch.randint(0, 3, (2, 2, 4, 5), generator=g)
    target[0, 0, :2] = I
    alpha = torch.tensor([0.75, 0.25, 0.25])  # scalar alpha 0.25, 3 classes
    valid = target != I
    expected = F.cross_entropy(logits, target, weight=alpha, ignore_index=I, reduction="none").sum() / valid.sum()
    loss = build_loss({"focal": {"alpha": 0.25, "gamma": 0}}, num_classes=3)
    assert float(loss(logits, target)) == pytest.approx(float(expected), abs=1e-5)


def test_dice_hand_value():
    # Sums over the labelled pixels A, B (C is ignored):
    #   class 0: I = 3/4*1 + 1/2*0 = 0.75, P = 3/4 + 1/2 = 1.25, G = 1 -> Dice0 = 1.5 / 2.25 = 0.666667
    #   class 1: I = 1/4*0 + 1/2*1 = 0.5,  P = 1/4 + 1/2 = 0.75, G = 1 -> Dice1 = 1.0 / 1.75 = 0.571429
    #   equal weights: 1 - (0.666667 + 0.571429) / 2 = 0.380952
    assert _call(build_loss({"dice": 1.0}, num_classes=2), _abc(), TARGET) == pytest.approx(0.380952, abs=1e-4)


def test_dice_per_class_weights():
    # a = (1, 3), normalised to sum 1: 1 - (1 * 0.666667 + 3 * 0.571429) / 4 = 1 - 2.380952 / 4 = 0.404762
    spec = {"dice": {"class_weights": [1.0, 3.0]}}
    assert _call(build_loss(spec, num_classes=2), _abc(), TARGET) == pytest.approx(0.404762, abs=1e-4)
    # scaling the weights changes nothing (normalisation): (2, 6) == (1, 3)
    spec = {"dice": {"class_weights": [2.0, 6.0]}}
    assert _call(build_loss(spec, num_classes=2), _abc(), TARGET) == pytest.approx(0.404762, abs=1e-4)
    # weight only on class 0: 1 - Dice0 = 0.333333
    spec = {"dice": {"class_weights": [1.0, 0.0]}}
    assert _call(build_loss(spec, num_classes=2), _abc(), TARGET) == pytest.approx(1 / 3, abs=1e-4)


def test_jaccard_log_hand_value():
    # IoU0 = I / (P + G - I) = 0.75 / (1.25 + 1 - 0.75) = 0.5; IoU1 = 0.5 / (0.75 + 1 - 0.5) = 0.4
    # loss = (-ln 0.5 - ln 0.4) / 2 = (0.693147 + 0.916291) / 2 = 0.804719
    assert _call(build_loss({"jaccard_log": 1.0}, num_classes=2), _abc(), TARGET) == pytest.approx(0.804719, abs=1e-4)


def test_perfect_prediction_overlap_losses_near_zero():
    target = torch.tensor([[[0, 1, 1, 2, I]]])
    logits = _logits((30.0, -30.0, -30.0), (-30.0, 30.0, -30.0), (-30.0, 30.0, -30.0), (-30.0, -30.0, 30.0),
                     (0.0, 9.0, 0.0))
    for name in ("jaccard_log", "dice", "ce", "focal"):
        assert _call(build_loss({name: 1.0}, num_classes=3), logits, target) == pytest.approx(0.0, abs=1e-5), name


def test_weighted_sum():
    # 1 * CE + 2 * Dice = 0.490415 + 2 * 0.380952 = 1.252319
    loss = build_loss({"ce": 1.0, "dice": {"weight": 2.0}}, num_classes=2)
    assert _call(loss, _abc(), TARGET) == pytest.approx(1.252319, abs=1e-4)
    assert float(loss.last_terms["dice"]) == pytest.approx(0.380952, abs=1e-4)


def test_multi_head_sum():
    # main = pixel A alone: CE = ln(4/3) = 0.287682; aux = logits (0, 0), target 0: CE = ln 2 = 0.693147
    # total = 0.287682 + 0.33 * 0.693147 = 0.516421
    target = torch.tensor([[[0]]])
    outputs = {"main": _logits((LN3, 0.0)), "aux2d": _logits((0.0, 0.0))}
    loss = MultiHeadLoss(build_loss({"ce": 1.0}, num_classes=2), aux_weights={"aux2d": 0.33})
    assert float(loss(outputs, target)) == pytest.approx(0.516421, abs=1e-5)
    with pytest.raises(ValueError, match="missing"):
        loss({"main": outputs["main"]}, target)
    with pytest.raises(ValueError, match="aux3"):
        loss({**outputs, "aux3": outputs["main"]}, target)
    with pytest.raises(ValueError, match="dict of outputs"):
        loss(outputs["main"], target)


# ---------------------------------------------------------------- unlabelled pixels

def _spec(name):
    return {name: {"weight": 1.0, "alpha": [0.5, 1.0, 2.0]} if name == "focal" else 1.0}


@pytest.mark.parametrize("name", LOSSES.names())
def test_ignored_pixels_never_contribute(name):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 6, generator=g)
    target = torch.randint(0, 3, (2, 4, 6), generator=g)
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, :, 4:] = True  # the last two columns are unlabelled
    target[ignored] = I
    wmap = torch.rand(2, 4, 6, generator=g) + 0.5
    loss = build_loss(_spec(name), num_classes=3)

    a = loss(logits, target, weight_map=wmap)
    changed = logits.clone()
    changed[ignored.unsqueeze(1).expand_as(changed)] = 50.0 * torch.randn(int(ignored.sum()) * 3, generator=g)
    other_w = torch.where(ignored, torch.full_like(wmap, 1e6), wmap)
    b = loss(changed, target, weight_map=other_w)
    assert float(a) == pytest.approx(float(b), abs=1e-6)

    # equals the loss on the labelled pixels only
    ref = loss(logits[..., :4], target[..., :4], weight_map=wmap[..., :4])
    assert float(a) == pytest.approx(float(ref), abs=1e-6)

    # no gradient reaches the logits of unlabelled pixels
    x = logits.clone().requires_grad_(True)
    loss(x, target, weight_map=wmap).backward()
    assert float(x.grad[..., 4:].abs().max()) == 0.0
    assert float(x.grad[..., :4].abs().max()) > 0.0


@pytest.mark.parametrize("name", LOSSES.names())
def test_all_unlabelled_batch_gives_zero(name):
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), I)
    value = build_loss(_spec(name), num_classes=3)(x, target, weight_map=torch.ones(1, 2, 2))
    assert float(value.detach()) == 0.0
    value.backward()


@pytest.mark.parametrize("name", LOSSES.names())
def test_3d_equals_2d_with_z_folded_into_y(name):
    # Every loss here is a mean over pixels or a batch-wide sum, so (N, C, Z, Y, X) and
    # the same voxels laid out as (N, C, Z*Y, X) give the same value.
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 3, 4, 5, generator=g)
    target = torch.randint(0, 3, (2, 3, 4, 5), generator=g)
    target[1, 2] = I
    wmap = torch.rand(2, 3, 4, 5, generator=g)
    loss = build_loss(_spec(name), num_classes=3)
    v3 = loss(logits, target, weight_map=wmap)
    v2 = loss(logits.reshape(2, 3, 12, 5), target.reshape(2, 12, 5), weight_map=wmap.reshape(2, 12, 5))
    assert float(v3) == pytest.approx(float(v2), abs=1e-6)


# ---------------------------------------------------------------- spec validation

def test_unknown_loss_suggests_a_name():
    with pytest.raises(ValueError, match="Did you mean 'dice'"):
        build_loss({"dise": 1.0}, num_classes=2)
    with pytest.raises(ValueError, match="Did you mean 'jaccard_log'"):
        build_loss({"jacard_log": 1.0}, num_classes=2)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="Did you mean 'gamma'"):
        build_loss({"focal": {"gama": 2}}, num_classes=2)
    with pytest.raises(ValueError, match="class_weights has 3 values but there are 2 classes"):
        build_loss({"dice": {"class_weights": [1, 2, 3]}}, num_classes=2)
    with pytest.raises(ValueError, match="weight must be"):
        build_loss({"ce": -1.0}, num_classes=2)
    with pytest.raises(ValueError, match="alpha must be in"):
        build_loss({"focal": {"alpha": 1.5}}, num_classes=2)
    with pytest.raises(ValueError, match="non-empty"):
        build_loss({}, num_classes=2)


def test_shape_mismatch_is_reported():
    loss = build_loss({"ce": 1.0}, num_classes=3)
    with pytest.raises(ValueError, match="channels"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target must have shape"):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_ce_plus_dice_reproduces_the_default_dice_ce_loss():
    # so the trainer's default can become build_loss({"ce": ce_weight, "dice": dice_weight}, ...)
    from emseg.training import DiceCELoss

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)
    target[0, :2] = I
    w = torch.tensor([0.5, 1.0, 2.0])
    old = DiceCELoss(class_weights=w, ce_weight=0.7, dice_weight=1.3)(logits, target)
    new = build_loss({"ce": 0.7, "dice": 1.3}, num_classes=3, class_weights=w)(logits, target)
    assert float(new) == pytest.approx(float(old), abs=1e-6)
