"""Budget-aware defaults: batch and patch size fitted to the measured step time, the budget and the data.

With ``training.max_minutes`` given and ``training.adapt_to_budget`` on (the
default), the batch and patch sizes the configuration leaves unset are chosen so
that the budget buys about :data:`TARGET_STEPS` optimiser steps on this machine:

1. one warm-up and two timed steps of the configured network at the default
   batch ``B0`` and patch ``P0`` (``training.precision``) give ``t`` seconds per step;
2. step time is taken as proportional to the pixels of a batch, ``B * P**2``; the
   pixels per step that fit ``TARGET_STEPS`` steps into 85 % of the budget (the rest
   is validation) are ``B0 * P0**2 * (0.85 * budget / t) / TARGET_STEPS``;
3. among batches ``{2, 4, 8, 16}`` and patches ``{128, ..., 512}`` (multiples of 64, at
   most the training slices) the pair closest to that (in log scale) wins, with
   the data's limits: the patch is at least twice the large objects (90th
   percentile of the equivalent diameter of the labelled foreground components,
   at least 128) and, when a foreground class covers under 1 % of the labelled
   pixels, the batch is at least 4 (rare classes need samples per step).

So a slow CPU trains smaller batches for more steps and a fast one larger ones;
the choice (measurement, rule inputs, result) is logged, stored in
``config.yaml`` (the chosen sizes), ``summary.json`` and the checkpoints
(``training.budget``), and reused by ``--resume``. Keys the user sets are
never changed; 3-D models keep their defaults.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from emseg._device import default_device, resolve_precision
from emseg.config import Config
from emseg.data import IGNORE_INDEX
from emseg.models import MODELS, build_model
from emseg.training._route import synthetic_step

logger = logging.getLogger(__name__)

__all__ = ["TARGET_STEPS", "adapt_to_budget", "choose_sizes", "object_diameter"]

#: Optimiser steps the budget should buy.
TARGET_STEPS = 1000
BATCHES = (2, 4, 8, 16)
PATCHES = (128, 192, 256, 320, 384, 448, 512)
#: A foreground class below this share of the labelled pixels counts as rare.
RARE_FRACTION = 0.01
USABLE = 0.85


def object_diameter(labels: list[np.ndarray], *, background: int | None, ignore: int) -> float:
    """90th percentile of the equivalent diameter ``sqrt(4 A / pi)`` of foreground components (pixels; 0 if none)."""
    from scipy import ndimage

    diameters = []
    for lab in labels:
        for c in np.unique(lab):
            if c == background or c == ignore or c < 0:
                continue
            comps, n = ndimage.label(lab == c)
            if n:
                areas = np.bincount(comps.ravel())[1:]
                diameters.extend(np.sqrt(4 * areas[areas >= 4] / math.pi))
    return float(np.percentile(diameters, 90)) if diameters else 0.0


def choose_sizes(*, seconds_per_step: float, batch0: int, patch0: int, budget_s: float, min_patch: int,
                 max_patch: int, min_batch: int, set_batch: int | None = None, set_patch: int | None = None) -> dict:
    """The (batch, patch) whose pixels per step are closest to :data:`TARGET_STEPS` steps in the budget."""
    pixel_rate = batch0 * patch0 ** 2 / seconds_per_step
    wanted = pixel_rate * USABLE * budget_s / TARGET_STEPS
    batches = [set_batch] if set_batch else [b for b in BATCHES if b >= min_batch] or [max(BATCHES)]
    patches = [set_patch] if set_patch else [p for p in PATCHES if min_patch <= p <= max_patch] or [
        min(max(min_patch, PATCHES[0]), max_patch)]
    best = min(((b, p) for b in batches for p in patches),
               key=lambda bp: (abs(math.log(bp[0] * bp[1] ** 2 / wanted)), abs(bp[1] - patch0), -bp[0]))
    steps = USABLE * budget_s / (best[0] * best[1] ** 2 / pixel_rate)
    return {"batch_size": best[0], "patch_size": best[1], "expected_steps": int(steps),
            "steps_at_defaults": int(USABLE * budget_s / seconds_per_step)}


def _step_seconds(config: Config, batch: int, patch: int) -> float:
    device = default_device()
    in_channels = config.model.context_slices + len(config.preprocess.grain_filter)
    model = build_model(config.model.name, in_channels=in_channels, num_classes=len(config.data.classes),
                        options=config.model.options).to(device)
    dtype = resolve_precision(config.training.precision, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-12)
    x = torch.randn((batch, in_channels, patch, patch), generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(3):
            times.append(synthetic_step(model, x, optimizer, device, dtype))
    return min(times[1:])


def adapt_to_budget(config: Config, train_data: Any, *, resumed: dict[str, Any] | None = None,
                    user_set: set[str] | None = None) -> tuple[Config, dict | None]:
    """``config`` with the budget-aware batch / patch size (a copy), and what was chosen and why (or ``None``).

    ``resumed``: the ``training`` record of the ``last.pt`` a run resumes from: its recorded choice is
    reused (no measurement), and a run started without one keeps the configured sizes.
    ``user_set``: the training keys the user gave (default: ``config.training.model_fields_set``).
    """
    tc = config.training
    fields = tc.model_fields_set if user_set is None else user_set
    spec = MODELS.get(config.model.name)
    if resumed is not None:
        recorded = resumed.get("budget")
        if recorded is None:
            return config, None
        chosen = {"batch_size": recorded["batch_size"], "patch_size": [recorded["patch_size"]] * 2}
        return config.model_copy(update={"training": tc.model_copy(update=chosen)}), recorded
    free = [k for k in ("batch_size", "patch_size") if k not in fields]
    if (not tc.adapt_to_budget or "max_minutes" not in fields or not free or spec.spatial_dims != 2
            or spec.backend != "torch" or spec.valid_padding):
        return config, None
    batch0, patch0 = tc.batch_size, int(tc.patch_size[-1])
    t0 = time.perf_counter()
    seconds = _step_seconds(config, batch0, patch0)
    labels = list(train_data.labels)
    max_patch = min(min(lab.shape[-2:]) for lab in labels) // 64 * 64 or 64
    diameter = object_diameter(labels, background=config.data.background, ignore=IGNORE_INDEX)
    min_patch = max(128, int(math.ceil(2 * diameter / 64) * 64))
    counts = np.bincount(np.concatenate([lab[(lab >= 0) & (lab != IGNORE_INDEX)].ravel() for lab in labels]
                                        ).astype(np.int64),
                         minlength=len(config.data.classes)).astype(float)
    fractions = counts / max(counts.sum(), 1.0)
    rare = [config.data.classes[c] for c, f in enumerate(fractions)
            if c != config.data.background and 0 < f < RARE_FRACTION]
    sizes = choose_sizes(seconds_per_step=seconds, batch0=batch0, patch0=patch0, budget_s=tc.max_minutes * 60.0,
                         min_patch=min(min_patch, max_patch), max_patch=max(max_patch, 64), min_batch=4 if rare else 2,
                         set_batch=None if "batch_size" in free else batch0,
                         set_patch=None if "patch_size" in free else patch0)
    info = {**sizes, "seconds_per_step_at_defaults": round(seconds, 4), "default_batch_size": batch0,
            "default_patch_size": patch0, "object_diameter_p90": round(diameter, 1), "min_patch": min_patch,
            "rare_classes": rare, "target_steps": TARGET_STEPS, "measure_s": round(time.perf_counter() - t0, 1)}
    logger.info("budget-aware defaults for %g minutes: batch %d, patch %d (%.3g s per step at batch %d, patch %d: "
                "%d steps; about %d with these; large objects %.0f px, rare classes %s)", tc.max_minutes,
                sizes["batch_size"], sizes["patch_size"], seconds, batch0, patch0, sizes["steps_at_defaults"],
                sizes["expected_steps"], diameter, rare or "none")
    update = {"batch_size": sizes["batch_size"], "patch_size": [sizes["patch_size"]] * 2}
    return config.model_copy(update={"training": tc.model_copy(update=update)}), info
