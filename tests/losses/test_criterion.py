"""training.loss / aux heads in the configuration, and unlabelled pixels in every configured loss."""

from __future__ import annotations

import pytest
import torch

from emseg.config import ConfigError, TrainingConfig, config_from_dict
from emseg.data import IGNORE_INDEX
from emseg.training import DiceCELoss
from emseg.losses import build_criterion, multi_head

I = IGNORE_INDEX


def _config(tmp_path, epfl_crop, **training):
    return config_from_dict({
        "data": {"train": {"image": str(epfl_crop["raw"]), "labels": str(epfl_crop["labels"])},
                 "classes": ["a", "b", "c"]},
        "training": training,
    })


def test_default_is_todays_dice_plus_ce(tmp_path):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, generator=g)
    target = torch.randint(0, 3, (2, 6, 5), generator=g)
    target[1, :2] = I
    w = torch.tensor([0.3, 1.0, 2.5])
    tc = TrainingConfig(ce_weight=0.5, dice_weight=2.0)
    new = build_criterion(tc, num_classes=3, class_weights=w)(logits, target)
    old = DiceCELoss(class_weights=w, ce_weight=0.5, dice_weight=2.0)(logits, target)
    assert float(new) == pytest.approx(float(old), abs=1e-6)


def test_auto_options_get_the_frequency_weights():
    tc = TrainingConfig(loss={"dice": {"class_weights": "auto"}, "focal": {"alpha": "auto", "weight": 0.5}})
    loss = build_criterion(tc, num_classes=3, class_weights=None, auto_weights=[0.5, 1.0, 1.5])
    assert loss.losses["dice"].class_weights.tolist() == [0.5, 1.0, 1.5]
    assert loss.losses["focal"].alpha == [0.5, 1.0, 1.5]
    assert loss.weights == {"dice": 1.0, "focal": 0.5}


def test_loss_keys_are_validated_with_suggestions(tmp_path, epfl_crop):
    with pytest.raises(ConfigError, match="training.loss.*Did you mean 'focal'"):
        _config(tmp_path, epfl_crop, loss={"focla": 1.0})
    with pytest.raises(ConfigError, match="Did you mean 'gamma'"):
        _config(tmp_path, epfl_crop, loss={"focal": {"gama": 2}})
    with pytest.raises(ConfigError, match="class_weights has 2 values but there are 3 classes"):
        _config(tmp_path, epfl_crop, loss={"dice": {"class_weights": [1, 2]}})
    with pytest.raises(ConfigError, match="needs training.weight_map"):
        _config(tmp_path, epfl_crop, loss={"weighted_ce": 1.0})
    with pytest.raises(ConfigError, match="no 'weighted_ce' term"):
        _config(tmp_path, epfl_crop, loss={"ce": 1.0}, weight_map={"kind": "guay"})
    with pytest.raises(ConfigError, match=r"edge_terms\[0\].target has class indices \[5\]"):
        _config(tmp_path, epfl_crop, weight_map={"kind": "guay", "edge_terms": [{"source": 1, "target": 5}]})
    cfg = _config(tmp_path, epfl_crop, loss={"focal": 1.0, "dice": {"weight": 1, "class_weights": [1, 2, 3]}})
    assert cfg.training.loss["dice"]["class_weights"] == [1, 2, 3]
    # a weight map alone means weighted_ce
    assert _config(tmp_path, epfl_crop, weight_map={"kind": "unet_border", "foreground": 1}).training.weight_map.w0 is None


def test_multi_head_wrapping_and_default_aux_weight():
    base = build_criterion(TrainingConfig(loss={"ce": 1.0}), num_classes=2, class_weights=None)
    target = torch.tensor([[[0, 1]]])
    main, aux = torch.zeros(1, 2, 1, 2), torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])
    loss = multi_head(base, ["main", "aux2d"], None)
    expected = float(base(main, target)) + 0.33 * float(base(aux, target))
    assert float(loss({"main": main, "aux2d": aux}, target)) == pytest.approx(expected)
    assert multi_head(base, ["main", "aux2d"], {"aux2d": 1.0}).aux_weights == {"aux2d": 1.0}
    with pytest.raises(ValueError, match="aux_loss_weights"):
        multi_head(base, ["main", "deep1"], None)
    with pytest.raises(ValueError, match=r"names \['aux3d'\]"):
        multi_head(base, ["main", "aux2d"], {"aux3d": 0.5})


@pytest.mark.parametrize("spec", [
    {"focal": {"alpha": 0.25, "gamma": 2.0}},  # MONAI FocalLoss, scalar alpha
    {"focal": {"alpha": None, "gamma": 0.5}},
    {"dice": {"class_weights": [0.2, 1.0, 3.0]}},  # MONAI DiceLoss with per-class weights
    {"jaccard_log": {"class_weights": [1.0, 0.0, 2.0]}},
    {"ce": {"class_weights": [1.0, 2.0, 0.5]}, "dice": 1.0, "focal": 0.5},
])
def test_ignored_pixels_never_contribute_with_options_and_heads(spec):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)
    target[:, :, 4:] = I
    base = build_criterion(TrainingConfig(loss=spec), num_classes=3, class_weights=None)
    loss = multi_head(base, ["main", "aux2d"], None)
    x = {"main": logits.clone().requires_grad_(True), "aux2d": (logits * 0.5).requires_grad_(True)}
    value = loss(x, target)
    ref = loss({k: v[..., :4] for k, v in x.items()}, target[..., :4])
    assert float(value.detach()) == pytest.approx(float(ref.detach()), abs=1e-6)
    value.backward()
    for head in x.values():
        assert float(head.grad[..., 4:].abs().max()) == 0.0 and float(head.grad[..., :4].abs().max()) > 0


def test_legacy_dice_ce_ignores_unlabelled_pixels():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(1, 3, 4, 6, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (1, 4, 6), generator=g)
    target[..., 3:] = I
    loss = DiceCELoss(class_weights=torch.tensor([1.0, 2.0, 3.0]))
    value = loss(logits, target)
    assert float(value.detach()) == pytest.approx(float(loss(logits[..., :3], target[..., :3]).detach()), abs=1e-6)
    value.backward()
    assert float(logits.grad[..., 3:].abs().max()) == 0.0
