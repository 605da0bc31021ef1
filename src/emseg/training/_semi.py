"""Semi-supervised loss term: mean teacher or confidence-thresholded pseudo-labels on ``data.unlabelled``.

Attached to the training loop by a small hook (:class:`SemiSupervised`): every step draws a batch of
unlabelled patches, adds ``weight * ramp(t) * term`` to the supervised loss and, after the optimiser
step, moves the EMA teacher.  Pixels of an unlabelled patch that carry a real label (the unlabelled
volume may contain the labelled slices) keep their label: they never get a pseudo-label and are left
out of the consistency term (the supervised loss already sees them).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from emseg._device import autocast
from emseg.config import Config
from emseg.constants import IGNORE_INDEX
from emseg.data import Normalizer, UnlabelledVolumes, parse_slices
from emseg.io import open_image
from emseg.training._ema import WeightAverage
from emseg.training._spatial import match_target

__all__ = ["SemiSupervised", "balance_weights", "cutmix_boxes", "mix", "pseudo_labels", "ramp_weight",
           "supervised_term"]


def pseudo_labels(probabilities: torch.Tensor, thresholds: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Confident predictions as labels; real labels kept; the rest ignored.

    Args:
        probabilities: ``(N, K, *S)`` class probabilities (the teacher's).
        thresholds: ``(K,)``: a pixel predicted as class ``k`` is kept when its probability is at least
            ``thresholds[k]``.
        known: ``(N, *S)`` real labels, :data:`~emseg.constants.IGNORE_INDEX` where there are none.

    Returns:
        ``(N, *S)`` int64: ``known`` where it is a label, else the predicted class where confident,
        else ``IGNORE_INDEX``.
    """
    confidence, cls = probabilities.max(dim=1)
    keep = confidence >= thresholds.to(probabilities.device)[cls]
    out = torch.where(keep, cls, torch.full_like(cls, IGNORE_INDEX))
    known = known.to(out.device, torch.long)
    return torch.where(known != IGNORE_INDEX, known, out)


def balance_weights(probabilities: torch.Tensor, target: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights that give the confident pseudo-labels the class proportions of the teacher's predictions.

    A threshold keeps more of a large, easy class (background, a mitochondrion's inside) than of a thin or
    rare one (a membrane, a synapse), so training on the kept pixels alone pulls the student towards the
    easy classes.  Among the pixels without a real label (``free``), class ``k`` of the teacher's argmax
    has ``n_k`` pixels of which ``m_k`` pass its threshold: each kept one is weighted ``n_k / m_k``, so
    the kept pixels of each class weigh what all of that class's pixels would.  Pixels with real labels
    or ignored ones weigh 1 (the loss ignores the latter anyway).

    Args:
        probabilities: ``(N, K, *S)`` teacher probabilities.
        target: ``(N, *S)`` the output of :func:`pseudo_labels`.
        free: ``(N, *S)`` bool, True where there is no real label.
    """
    predicted = probabilities.argmax(dim=1)
    num_classes = probabilities.shape[1]
    kept = free & (target != IGNORE_INDEX)
    n = torch.bincount(predicted[free], minlength=num_classes).to(torch.float32)
    m = torch.bincount(target[kept], minlength=num_classes).to(torch.float32)
    per_class = torch.where(m > 0, n / m.clamp_min(1.0), torch.ones_like(n))
    weights = torch.ones(target.shape, dtype=torch.float32, device=target.device)
    weights[kept] = per_class[target[kept]]
    return weights


def supervised_term(criterion: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The supervised loss on the pseudo-labels, scaled by the fraction of pixels that have one.

    ``criterion`` averages over the labelled pixels only (its class weights included), so it is multiplied by
    ``labelled / all`` pixels: like the plain cross-entropy term, a batch where the teacher is sure of few
    pixels pulls little, and one where it is sure of none gives 0 (not the NaN of an empty mean).
    """
    count = int((target != IGNORE_INDEX).sum())
    if count == 0:
        return logits.float().sum() * 0.0
    return criterion(logits.float(), target) * (count / target.numel())


def cutmix_boxes(n: int, shape: tuple[int, int], rng: np.random.Generator, area: float = 0.5) -> np.ndarray:
    """``(n, Y, X)`` bool masks, each one box of about ``area`` of the plane (aspect ratio 1/2 to 2, random place).

    Where a mask is True, patch ``i`` of a mixed batch shows patch ``(i + 1) % n`` (see :func:`mix`).
    """
    ny, nx = shape
    masks = np.zeros((n, ny, nx), dtype=bool)
    for i in range(n):
        ratio = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        h = int(np.clip(round(ny * np.sqrt(area * ratio)), 1, ny))
        w = int(np.clip(round(nx * area / max(h / ny, 1e-9)), 1, nx))
        y, x = int(rng.integers(0, ny - h + 1)), int(rng.integers(0, nx - w + 1))
        masks[i, y:y + h, x:x + w] = True
    return masks


def mix(a: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Patch ``i`` of ``a`` with the box of ``masks[i]`` taken from patch ``(i + 1) % N``.

    ``a`` is ``(N, ...)`` with the plane ``(Y, X)`` last and ``masks`` ``(N, Y', X')``; masks of another size
    than the plane (a network whose output is smaller than its input) are resized by nearest neighbour.
    Works for images ``(N, C, [Z,] Y, X)``, probabilities and label maps ``(N, [Z,] Y, X)`` alike.
    """
    plane = tuple(a.shape[-2:])
    m = masks.to(a.device)
    if tuple(m.shape[-2:]) != plane:
        m = F.interpolate(m[:, None].float(), size=plane, mode="nearest")[:, 0] > 0.5
    m = m.reshape(m.shape[0], *([1] * (a.ndim - 3)), *plane)
    return torch.where(m, torch.roll(a, shifts=-1, dims=0), a)


def ramp_weight(weight: float, fraction: float, ramp_up: float) -> float:
    """``weight * exp(-5 (1 - t / ramp_up)^2)`` (Laine & Aila's sigmoid ramp-up), ``weight`` after ``ramp_up``."""
    if ramp_up <= 0 or fraction >= ramp_up:
        return float(weight)
    return float(weight) * math.exp(-5.0 * (1.0 - fraction / ramp_up) ** 2)


def _weak(x: np.ndarray, known: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips and 90 degree rotations in (y, x), the same for the patch ``(C, *S)`` and its labels ``(*S)``."""
    if rng.random() < 0.5:
        x, known = x[..., ::-1], known[..., ::-1]
    if rng.random() < 0.5:
        x, known = x[..., ::-1, :], known[..., ::-1, :]
    if x.shape[-1] == x.shape[-2]:
        k = int(rng.integers(0, 4))
        x, known = np.rot90(x, k, axes=(-2, -1)), np.rot90(known, k, axes=(-2, -1))
    return np.ascontiguousarray(x), np.ascontiguousarray(known)


def _strong(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric changes only (pixels stay aligned with the weak view): contrast, brightness, blur, noise."""
    x = x * rng.uniform(0.75, 1.25) + rng.uniform(-0.25, 0.25)
    if rng.random() < 0.3:
        sigma = [0.0] * (x.ndim - 2) + [float(rng.uniform(0.3, 1.2))] * 2
        x = ndimage.gaussian_filter(x, sigma)
    if rng.random() < 0.5:
        x = x + rng.uniform(0.0, 0.15) * rng.standard_normal(x.shape)
    return x.astype(np.float32)


class SemiSupervised:
    """The semi-supervised term of ``training.semi_supervised`` and its EMA teacher.

    Args:
        config: the run's configuration (``data.unlabelled``, ``training.semi_supervised``).
        model: the student network (the teacher starts as its copy).
        normalizer: the run's intensity normaliser.
        patch_size: the training patch ``(Y, X)`` or ``(Z, Y, X)``.
        device, dtype: where and in which autocast precision to run.
        criterion: the run's supervised loss ``criterion(logits, target)`` (with its class weights), used on
            the pseudo-labels when ``loss: supervised``.
    """

    def __init__(self, config: Config, model: torch.nn.Module, *, normalizer: Normalizer, patch_size: tuple[int, ...],
                 device: torch.device, dtype: torch.dtype | None, criterion: torch.nn.Module | None = None) -> None:
        sc = config.training.semi_supervised
        if sc is None:
            raise ValueError("training.semi_supervised is not set")
        if sc.loss == "supervised":
            if criterion is None:
                raise ValueError("training.semi_supervised.loss: supervised needs the run's supervised loss")
            if getattr(criterion, "requires_weight_map", False):
                raise ValueError("training.semi_supervised.loss: supervised cannot use a loss that needs a weight map "
                                 "(weighted_ce: the map comes from real labels); use loss: ce, or another "
                                 "training.loss")
        self.criterion = criterion
        self.config, self.normalizer, self.device, self.dtype = sc, normalizer, device, dtype
        num_classes = len(config.data.classes)
        values = sc.threshold if isinstance(sc.threshold, list) else [sc.threshold] * num_classes
        self.thresholds = torch.tensor(values, dtype=torch.float32)
        self.batch_size = sc.batch_size or config.training.batch_size
        if sc.cutmix and self.batch_size < 2:
            raise ValueError("training.semi_supervised.cutmix mixes unlabelled patches in pairs: it needs 2 or more "
                             f"per step, got batch_size {self.batch_size}")
        self.data = UnlabelledVolumes([(s.image, s.slices) for s in config.data.unlabelled],
                                      patch_size=patch_size, context=config.model.context_slices)
        self.known = self._known_labels(config)
        self.teacher = WeightAverage(model, sc.teacher_decay)
        self.rng = np.random.default_rng([config.training.seed, 18])  # apart from the supervised stream
        self._log: dict[str, list[float]] = {"semi_loss": [], "semi_weight": [], "semi_confident_fraction": []}

    def _known_labels(self, config: Config) -> dict[tuple[int, int], np.ndarray]:
        """``(source, z) -> (Y, X)`` real labels of unlabelled slices that are also training slices."""
        known: dict[tuple[int, int], np.ndarray] = {}
        for v, path in enumerate(self.data.paths):
            for source in config.data.train:
                if os.path.realpath(source.image) != os.path.realpath(path):
                    continue
                with open_image(source.labels) as labels:
                    zs = parse_slices(source.slices, labels.array.shape[0])
                    for z in zs:
                        lab = np.asarray(labels.array[z]).astype(np.int64)
                        if config.data.ignore_label is not None:
                            lab[lab == config.data.ignore_label] = IGNORE_INDEX
                        known[(v, z)] = lab
        return known

    def _known_patch(self, where: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
        v, z, y, x = where
        py, px = shape[-2:]
        depth = shape[0] if len(shape) == 3 else 1
        out = np.full((depth, py, px), IGNORE_INDEX, dtype=np.int64)
        for k in range(depth):
            lab = self.known.get((v, z + k))
            if lab is not None:
                out[k] = lab[y:y + py, x:x + px]
        return out if len(shape) == 3 else out[0]

    def weight(self, fraction: float) -> float:
        return ramp_weight(self.config.weight, fraction, self.config.ramp_up)

    def loss(self, model: torch.nn.Module, *, fraction: float) -> torch.Tensor:
        """``weight * ramp(fraction) * term`` for one batch of unlabelled patches (a scalar with gradient)."""
        raw, where = self.data.sample_with_positions(self.batch_size, self.rng)
        patch = tuple(raw.shape[2:])
        weak, strong, known = [], [], []
        for image, at in zip(self.normalizer(raw), where):
            w, k = _weak(image, self._known_patch(at, patch), self.rng)
            weak.append(w), known.append(k), strong.append(_strong(w, self.rng))
        weak_t = torch.from_numpy(np.stack(weak)).to(self.device)
        strong_t = torch.from_numpy(np.stack(strong)).to(self.device)
        masks = None
        if self.config.cutmix:  # the teacher sees the unmixed weak views; its predictions are mixed below
            masks = torch.from_numpy(cutmix_boxes(len(weak), patch[-2:], self.rng))
            strong_t = mix(strong_t, masks)
        with torch.no_grad(), autocast(self.device, self.dtype):
            teacher = self.teacher.model(weak_t)
        with autocast(self.device, self.dtype):
            student = model(strong_t)
        teacher = teacher["main"] if isinstance(teacher, dict) else teacher
        student = student["main"] if isinstance(student, dict) else student
        known_t = match_target(student, torch.from_numpy(np.stack(known)).to(self.device))
        probs = torch.softmax(teacher.float(), dim=1)
        if masks is not None:
            probs, known_t = mix(probs, masks), mix(known_t, masks)
        if self.config.method == "pseudo_label":
            target = pseudo_labels(probs, self.thresholds, known_t)
            confident = (target != IGNORE_INDEX) & (known_t == IGNORE_INDEX)
            share = float(confident.sum()) / max(1, int((known_t == IGNORE_INDEX).sum()))
            if self.config.loss == "supervised":
                term = supervised_term(self.criterion, student, target)
            else:
                ce = F.cross_entropy(student.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
                if self.config.balance:
                    ce = ce * balance_weights(probs, target, known_t == IGNORE_INDEX)
                term = ce.sum() / ce.numel()  # as FixMatch: ignored pixels count as 0, the mean is over all pixels
        else:  # mean teacher: squared distance of the class probabilities on the pixels without a real label
            free = (known_t == IGNORE_INDEX).to(torch.float32)
            distance = ((torch.softmax(student.float(), dim=1) - probs) ** 2).sum(dim=1)
            term = (distance * free).sum() / free.sum().clamp_min(1.0)
            share = float("nan")
        w = self.weight(fraction)
        self._log["semi_loss"].append(float(term.item()))
        self._log["semi_weight"].append(w)
        self._log["semi_confident_fraction"].append(share)
        return w * term

    def update(self, model: torch.nn.Module) -> None:
        """After the optimiser step: the teacher follows the student."""
        self.teacher.update(model)

    def metrics(self) -> dict[str, float | None]:
        """Means over the steps since the last call (for the epoch's metrics line)."""
        out: dict[str, float | None] = {}
        for key, values in self._log.items():
            finite = [v for v in values if not math.isnan(v)]
            out[key] = float(np.mean(finite)) if finite else None
            values.clear()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.model.state_dict(), "teacher_info": self.teacher.state_dict(),
                "rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load(state["teacher"], state["teacher_info"])
        self.rng.bit_generator.state = json.loads(state["rng"])

    def close(self) -> None:
        self.data.close()
