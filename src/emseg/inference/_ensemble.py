"""EnsemblePredictor: several member predictors combined, predicting like one model.

Each member keeps its own normalisation, context slices and architecture (2-D,
2.5-D, 3-D, random forest); only their class probabilities are combined.

Why this is in inference and not in :mod:`emseg.ensemble` (issue 17): an
ensemble artefact (``model.pt`` with ``backend: ensemble``) must load wherever
a single model loads (``emseg predict``, the blockwise engine, ``emseg
evaluate``, :func:`~emseg.inference.load_predictor`). With the predictor in
the ensemble package, inference had to import the package above it (a cycle),
or the ensemble had to register a loader with inference at import time, which
would make ``Predictor.from_checkpoint(ensemble)`` fail unless
``emseg.ensemble`` happened to be imported first. Combining probabilities is
prediction; training members and searching weights is what stays in
:mod:`emseg.ensemble` (which re-exports these names). The ensemble *has*
members satisfying :class:`~emseg.inference.SegmentationPredictor`; it shares
no implementation with :class:`~emseg.inference.Predictor`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from emseg.data import context_stack as _context_stack
from emseg.inference._combine import METHODS, combine_probabilities
from emseg.inference._protocol import SegmentationPredictor, volume_labels
from emseg.inference._tiling import first_argmax

logger = logging.getLogger(__name__)

__all__ = ["EnsemblePredictor", "member_probabilities"]


def _is_volumetric(predictor: Any, spatial_dims: int) -> bool:
    return spatial_dims == 3 or getattr(predictor, "spatial_dims", 2) == 3


def member_probabilities(predictor: Any, volume: Any, zs: Sequence[int], *, spatial_dims: int = 2) -> np.ndarray:
    """One member's probabilities of slices ``zs`` of a ``(Z, Y, X)`` volume, ``(K, S, Y, X)``.

    A 2-D (or 2.5-D) member predicts slice by slice with its own context
    slices; a 3-D member predicts the whole volume (``predict_proba_volume``)
    and the slices are taken from it.
    """
    if _is_volumetric(predictor, spatial_dims):
        return np.asarray(predictor.predict_proba_volume(volume))[:, list(zs)]
    context = int(getattr(predictor, "context_slices", 1))
    slices = []
    for z in zs:
        image = np.asarray(volume[z]) if context == 1 else _context_stack(volume, z, context)
        slices.append(predictor.predict_proba_slice(image))
    return np.stack(slices, axis=1)


class EnsemblePredictor:
    """Averages, weights or votes over member predictors; used like a single :class:`Predictor`.

    Build it with :func:`~emseg.inference.load_predictor` (or :meth:`Predictor.from_checkpoint`) on an
    ensemble ``model.pt`` (written by :func:`emseg.ensemble.build_ensemble`) or directly from member
    predictors. It satisfies :class:`~emseg.inference.SegmentationPredictor` and is registered as a
    virtual :class:`~emseg.inference.Predictor` (``isinstance(ensemble, Predictor)`` holds, as code written
    for one model expects) without inheriting from it.

    Parameters
    ----------
    members
        Member predictors (:class:`Predictor` or anything satisfying :class:`SegmentationPredictor`).
    method
        ``"mean"``, ``"weighted"`` or ``"vote"`` (see :func:`combine_probabilities`).
    weights
        One non-negative weight per member (``weighted``); normalised to sum 1.
    names
        A label per member (shown in logs and reports).
    member_dims
        Per member: 3 for members that predict whole volumes, 2 otherwise
        (default: each member's ``spatial_dims`` attribute).

    Attributes ``spatial_dims`` (3 when any member is 3-D), ``context_slices``
    (the largest member context), ``device``, ``window``, ``window_3d`` and
    ``overlap`` summarise the members for code written against a single
    :class:`Predictor`.
    """

    def __init__(self, members: Sequence[Any], *, method: str = "mean", weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None, member_dims: Sequence[int] | None = None) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if method not in METHODS:
            raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
        classes = list(members[0].classes)
        for i, member in enumerate(members):
            if list(member.classes) != classes:
                raise ValueError(f"member {i} has classes {list(member.classes)} but member 0 has {classes}; "
                                 "every member of an ensemble must predict the same classes in the same order")
        m = len(members)
        self.members = list(members)
        self.method = method
        self.weights = [1.0 / m] * m if weights is None else [float(w) for w in weights]
        if len(self.weights) != m:
            raise ValueError(f"weights: expected {m} values (one per member), got {len(self.weights)}")
        self.names = list(names) if names is not None else [f"member-{i}" for i in range(m)]
        self.member_dims = (list(member_dims) if member_dims is not None
                            else [int(getattr(p, "spatial_dims", 2)) for p in members])
        self.classes = classes
        self.context_slices = max(int(getattr(p, "context_slices", 1)) for p in members)
        self.spatial_dims = 3 if any(_is_volumetric(p, d) for p, d in zip(members, self.member_dims)) else 2
        self.model = None
        self.normalizer = None  # each member normalises its own input
        self.is_torch = False
        self.tta = any(getattr(p, "tta", False) for p in members)
        self.device = getattr(members[0], "device", None)
        self.window = getattr(members[0], "window", None)
        self.overlap = getattr(members[0], "overlap", None)
        windows_3d = [tuple(p.window_3d) for p, d in zip(members, self.member_dims)
                      if _is_volumetric(p, d) and getattr(p, "window_3d", None) is not None]
        self.window_3d = max(windows_3d) if windows_3d else None

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict[str, Any], *, member_loader: Callable[..., SegmentationPredictor],
                             **kwargs: Any) -> EnsemblePredictor:
        """Rebuild every member from its nested checkpoint with ``member_loader(member_ckpt, **kwargs)``.

        ``kwargs`` (precision, tta, ...) go to each member. :meth:`Predictor.from_checkpoint_dict` passes its
        single-model loader; use that (or :func:`~emseg.inference.load_predictor`) to load an ensemble.
        """
        members = [member_loader(member, **kwargs) for member in ckpt["members"]]
        names = ckpt.get("member_names") or None
        dims = [int(member["model"].get("spatial_dims", 2)) for member in ckpt["members"]]
        return cls(members, method=ckpt["method"], weights=ckpt["weights"], names=names, member_dims=dims)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _combine(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        return combine_probabilities(probs, method=self.method, weights=self.weights)

    def predict_proba_slice(self, image: np.ndarray) -> np.ndarray:
        """Combined class probabilities of one slice.

        Args:
            image: ``(Y, X)`` raw slice, or ``(C, Y, X)`` with ``C`` (odd) context
                slices centred on the slice; each member gets the central
                slices it needs (``C`` must be at least the largest member
                context). A 3-D member sees the ``C`` slices as a small volume;
                prefer :meth:`predict_proba_volume` for 3-D members.

        Returns:
            ``(K, Y, X)`` float32.
        """
        image = np.asarray(image)
        stack = image[None] if image.ndim == 2 else image
        if stack.ndim != 3 or stack.shape[0] % 2 != 1:
            raise ValueError(f"image must be (Y, X) or (C, Y, X) with odd C; got shape {image.shape}")
        centre = stack.shape[0] // 2
        probs = []
        for member, dims, name in zip(self.members, self.member_dims, self.names):
            if _is_volumetric(member, dims):
                probs.append(np.asarray(member.predict_proba_volume(stack))[:, centre])
                continue
            context = int(getattr(member, "context_slices", 1))
            if context > stack.shape[0]:
                raise ValueError(f"ensemble member {name} needs {context} context slices but the image has "
                                 f"{stack.shape[0]}; pass a (C, Y, X) stack with C >= {self.context_slices} or use "
                                 "iter_slices / predict_volume on the whole stack")
            half = context // 2
            part = stack[centre - half: centre + half + 1]
            probs.append(member.predict_proba_slice(part[0] if context == 1 else part))
        return self._combine(probs)

    def predict_labels_slice(self, image: np.ndarray) -> np.ndarray:
        """Labels ``(Y, X)`` of one slice: the first class of largest combined probability."""
        return first_argmax(self.predict_proba_slice(image))

    def iter_slices(self, volume: Any, *, progress: Callable[[int], None] | None = None):
        """Yield ``(z, probabilities (K, Y, X))`` for every slice of a ``(Z, Y, X)`` volume.

        3-D members predict the whole volume first; 2-D members predict each
        slice with their own context slices.
        """
        volumetric = {i: np.asarray(m.predict_proba_volume(volume))
                      for i, (m, d) in enumerate(zip(self.members, self.member_dims)) if _is_volumetric(m, d)}
        for z in range(volume.shape[0]):
            stack = _context_stack(volume, z, self.context_slices)
            centre = self.context_slices // 2
            probs = []
            for i, member in enumerate(self.members):
                if i in volumetric:
                    probs.append(volumetric[i][:, z])
                    continue
                half = int(getattr(member, "context_slices", 1)) // 2
                part = stack[centre - half: centre + half + 1]
                probs.append(member.predict_proba_slice(part[0] if half == 0 else part))
            yield z, self._combine(probs)
            if progress is not None:
                progress(1)

    def predict_volume(self, volume: Any, *, probabilities: bool = False,
                       progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels ``(Z, Y, X)`` (first class of largest combined probability) and, if asked, the combined
        probabilities ``(K, Z, Y, X)`` of a raw volume, as :meth:`Predictor.predict_volume`."""
        return volume_labels(self, volume, probabilities=probabilities, progress=progress)

    def predict_proba_volume(self, volume: Any, *, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Combined probabilities of a raw ``(Z, Y, X)`` volume (or block), ``(K, Z, Y, X)`` float32.

        As :meth:`Predictor.predict_proba_volume`: nothing outside the given
        array is seen (2.5-D members take their context slices from within it).
        """
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ValueError(f"volume must be (Z, Y, X), got shape {volume.shape}")
        z, y, x = volume.shape
        out = np.empty((self.num_classes, z, y, x), np.float32)
        for k, p in self.iter_slices(volume, progress=progress):
            out[:, k] = p
        return out

    # ------------------------------------------------------------------ blockwise seam
    # 2-D/2.5-D ensembles run blockwise natively: one read of the union of the members' input boxes,
    # each member predicts its exact block (identical to its in-memory result), then the combination.
    # Ensembles with a 3-D member (spatial_dims 3) go through the engine's halo adapter instead.

    @property
    def halo(self) -> tuple[int, int, int]:
        """The largest member halo ``(z, y, x)``."""
        halos = [tuple(m.halo) for m in self.members]
        return tuple(max(int(h[i]) for h in halos) for i in range(3))  # type: ignore[return-value]

    def block_input(self, region: tuple[slice, slice, slice], shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        """Union of the members' input boxes for output ``region`` (members share this one read)."""
        boxes = [m.block_input(region, shape) for m in self.members]
        return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes))  # type: ignore[return-value]
                     for i in range(3))

    def predict_proba_block(self, data: np.ndarray, *, origin: tuple[int, int, int],
                            region: tuple[slice, slice, slice], shape: tuple[int, int, int]) -> np.ndarray:
        """Combined ``(K, nz, ny, nx)`` probabilities of ``region`` from the shared read ``data`` at ``origin``."""
        probs = []
        for member in self.members:
            box = member.block_input(region, shape)
            part = data[tuple(slice(b.start - o, b.stop - o) for b, o in zip(box, origin))]
            probs.append(member.predict_proba_block(part, origin=tuple(b.start for b in box), region=region,
                                                    shape=shape))
        return self._combine(probs)

    def predict_labels_block(self, data: np.ndarray, *, origin: tuple[int, int, int],
                             region: tuple[slice, slice, slice], shape: tuple[int, int, int]) -> np.ndarray:
        """Labels ``(nz, ny, nx)`` of ``region``: the first class of largest combined probability."""
        return first_argmax(self.predict_proba_block(data, origin=origin, region=region, shape=shape))
