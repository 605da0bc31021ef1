"""Model size and cost: parameter counts and FLOPs per slice, for benchmark tables.

The FLOP count uses :class:`torch.utils.flop_counter.FlopCounterMode`, which
counts the floating-point operations of matrix multiplications and
convolutions (2 per multiply-add) of one forward pass; element-wise layers
(norms, activations) are not counted, as is usual for published FLOP figures.
(The models helper branch adds a counter for ``emseg models``; the lead may
merge the two.)
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["model_complexity"]


def model_complexity(model: Any, *, in_channels: int = 1, shape: tuple[int, int] = (256, 256)) -> dict[str, Any]:
    """Parameter count and forward-pass FLOPs of one ``(in_channels, *shape)`` slice.

    Args:
        model: a torch module mapping ``(N, C, Y, X)`` to logits, or a trained
            :class:`~emseg.models.RandomForestSegmenter`.
        in_channels: ``C`` of the input.
        shape: ``(Y, X)`` slice size the FLOPs are counted for.

    Returns:
        ``{"parameters": int, "flops": int | None, "flops_shape": [Y, X],
        "parameters_kind": str}``. For a torch model ``parameters`` counts
        weights and ``flops`` the forward pass. For a random forest
        ``parameters`` is the number of tree nodes (its learned decisions) and
        ``flops`` is ``None``: trees compare, they do not multiply.
    """
    import torch

    if isinstance(model, torch.nn.Module):
        from torch.utils.flop_counter import FlopCounterMode

        params = sum(p.numel() for p in model.parameters())
        was_training = model.training
        model.eval()
        try:
            x = torch.zeros((1, in_channels, *shape), dtype=next(model.parameters()).dtype,
                            device=next(model.parameters()).device)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(x)
            flops = int(counter.get_total_flops())
        finally:
            model.train(was_training)
        return {"parameters": int(params), "parameters_kind": "weights", "flops": flops,
                "flops_shape": [int(s) for s in shape]}
    forest = getattr(model, "_forest", None)
    nodes = None
    estimators = getattr(forest, "estimators_", None)
    if estimators is not None:
        nodes = int(sum(tree.tree_.node_count for tree in estimators))
    return {"parameters": nodes, "parameters_kind": "tree nodes", "flops": None,
            "flops_shape": [int(s) for s in shape]}
