"""Cross-field checks of the training recipe, run when a configuration is validated."""

from __future__ import annotations

from typing import Any

from emseg.losses import build_loss, loss_spec, resolve_auto

__all__ = ["check_training_config"]


def check_training_config(config: Any) -> None:
    """Check what the field types alone cannot: loss names and options, class indices.

    Raises:
        ValueError: the message names the key (pydantic prefixes the location).
    """
    tc = config.training
    num_classes = len(config.data.classes)
    try:
        spec = loss_spec(tc)
        loss = build_loss(resolve_auto(spec, [1.0] * num_classes), num_classes=num_classes, class_weights=None)
    except ValueError as err:
        raise ValueError(f"training.loss: {err}") from None
    if loss.requires_weight_map and tc.weight_map is None:
        raise ValueError("training.loss uses 'weighted_ce', which needs training.weight_map "
                         "(e.g. {kind: guay, class_balance: true})")
    if tc.weight_map is not None and not loss.requires_weight_map:
        raise ValueError(f"training.weight_map is set but training.loss {sorted(spec)} has no 'weighted_ce' term to use it")
    wm = tc.weight_map
    if wm is not None:
        indices = [("foreground", wm.foreground)] if wm.kind == "unet_border" else []
        for i, term in enumerate(wm.edge_terms):
            indices += [(f"edge_terms[{i}].source", term.source), (f"edge_terms[{i}].target", term.target)]
        for key, values in indices:
            bad = [v for v in values if not 0 <= v < num_classes]
            if bad:
                raise ValueError(f"training.weight_map.{key} has class indices {bad} outside 0..{num_classes - 1} "
                                 f"({', '.join(config.data.classes)})")
    if tc.nesterov and tc.momentum == 0:
        raise ValueError("training.nesterov needs training.momentum > 0")
    if tc.optimizer != "sgd" and tc.nesterov:
        raise ValueError(f"training.nesterov applies to optimizer 'sgd', not {tc.optimizer!r}")
    for name, value in (tc.aux_loss_weights or {}).items():
        if not value >= 0:
            raise ValueError(f"training.aux_loss_weights.{name} must be >= 0, got {value}")
    for name, value in tc.weight_decay_groups.items():
        if not value >= 0:
            raise ValueError(f"training.weight_decay_groups.{name} must be >= 0, got {value}")
