"""``emseg ensemble``: members in, one ensemble artefact (``model.pt``) and a report out."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg._progress import progress_bar
from emseg._version import __version__
from emseg.config import config_from_dict
from emseg.data import parse_slices
from emseg.ensemble._combine import METHODS, grid_search_weights, majority_vote, score_weights, simplex_grid
from emseg.evaluation import EvaluationResult, confusion_from_labels
from emseg.inference import Predictor, member_probabilities
from emseg.io import atomic_output, open_image, remove_stale_temporaries
from emseg.models import ENSEMBLE_BACKEND, MODEL_FILENAME, load_checkpoint, resolve_model_path, save_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["EnsembleResult", "ValidationSource", "build_ensemble", "ensemble_checkpoint", "expand_members",
           "load_members", "split_ensembles"]

REPORT_FILENAME = "ensemble.json"
#: Cached validation probabilities larger than this go to a temporary memory-mapped .npy file.
MEMMAP_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class ValidationSource:
    """Labelled validation data: an image, its labels and an optional z selection (``"0:3"``)."""

    image: str
    labels: str
    slices: str | None = None


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def expand_members(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run directories, ``model.pt`` files, or folders of runs (``--seeds`` / ``--folds`` output) -> model files.

    A folder without ``model.pt`` whose subfolders hold ``model.pt`` (e.g.
    ``seed-0/``, ``seed-1/``) expands to those subfolders in natural order.

    Raises:
        ValueError: a path that is none of these, or the same model twice.
    """
    if not paths:
        raise ValueError("no members: pass run directories, model.pt files or a --seeds/--folds output folder")
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not (path / MODEL_FILENAME).is_file():
            runs = sorted((d for d in path.iterdir() if d.is_dir() and (d / MODEL_FILENAME).is_file()), key=_natural)
            if not runs:
                raise ValueError(f"{path} holds no {MODEL_FILENAME} and no run directories with one; pass run "
                                 "directories, model.pt files or a --seeds/--folds output folder")
            out += [d / MODEL_FILENAME for d in runs]
        else:
            out.append(resolve_model_path(path))
    seen: dict[Path, Path] = {}
    for p in out:
        key = p.resolve()
        if key in seen:
            raise ValueError(f"{p} is given twice as an ensemble member")
        seen[key] = p
    return out


def _member_name(path: Path) -> str:
    return path.parent.name if path.name == "model.pt" else path.stem


def load_members(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[dict[str, Any]]]:
    """Load the members' checkpoints (``weights_only=True``) and check they share classes.

    Returns:
        (names, checkpoints).

    Raises:
        ValueError: a member is itself an ensemble or names other classes than the first.
    """
    files = expand_members(paths)
    names, ckpts = [], []
    for file in files:
        ckpt = load_checkpoint(file)
        if ckpt["backend"] == ENSEMBLE_BACKEND:
            raise ValueError(f"{file} is already an ensemble; pass its members (run directories) instead")
        if ckpts and list(ckpt["classes"]) != list(ckpts[0]["classes"]):
            raise ValueError(f"ensemble members must share class names: {file} has {list(ckpt['classes'])} but "
                             f"{files[0]} has {list(ckpts[0]['classes'])}")
        ckpts.append(ckpt)
        names.append(_member_name(file))
    if len(set(names)) != len(names):
        names = [str(f.parent if f.name == "model.pt" else f) for f in files]
    return names, ckpts


def ensemble_checkpoint(checkpoints: Sequence[dict[str, Any]], *, method: str, weights: Sequence[float],
                        names: Sequence[str], selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ensemble artefact: plain dicts, lists, numbers and tensors only (loads with ``weights_only=True``).

    Keys: ``backend="ensemble"``, ``classes``, ``method``, ``weights`` (one per
    member), ``member_names``, ``members`` (each member's full checkpoint),
    ``model`` (a summary: largest context, spatial dims) and ``selection`` (how
    the weights were chosen).
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    first = checkpoints[0]
    context = max(int(c["model"].get("context_slices", 1)) for c in checkpoints)
    return {
        "emseg_version": __version__,
        "backend": ENSEMBLE_BACKEND,
        "classes": list(first["classes"]),
        "ignore_label": first.get("ignore_label"),
        "background": first.get("background"),
        "method": method,
        "weights": [float(w) for w in weights],
        "member_names": list(names),
        "members": [dict(c) for c in checkpoints],
        "model": {"name": "ensemble", "options": {"method": method}, "in_channels": context, "context_slices": context,
                  "spatial_dims": max(int(c["model"].get("spatial_dims", 2)) for c in checkpoints)},
        "selection": dict(selection or {}),
    }


def _validation_from_configs(checkpoints: Sequence[dict[str, Any]], names: Sequence[str]) -> list[ValidationSource]:
    """The validation slices of the members' training configs (the first member's; warn when they differ)."""
    from emseg.ensemble._splits import validation_sources

    found: list[list[ValidationSource]] = []
    described = [(n, c) for n, c in zip(names, checkpoints) if isinstance((c.get("training") or {}).get("config"), dict)]
    if not described:
        raise ValueError("no member carries its training configuration; pass validation data with --val IMAGE LABELS")
    names = [n for n, _ in described]
    for name, ckpt in described:
        data = ckpt["training"]["config"]
        try:
            config = config_from_dict(data, source=f"(training configuration of member {name})")
        except ValueError as err:
            raise ValueError(f"{err}\nthe validation data of member {name} cannot be read; pass --val IMAGE LABELS") from None
        found.append([ValidationSource(s.image, s.labels, s.slices) for s in validation_sources(config)])
    if not found[0]:
        raise ValueError(f"member {names[0]} was trained without validation data; pass --val IMAGE LABELS")
    if any(f != found[0] for f in found[1:]):
        logger.warning("the members were validated on different data (k-fold members?): using the validation data "
                       "of %s, which other members may have trained on; pass --val with held-out data for an "
                       "unbiased choice", names[0])
    return found[0]


def _read_validation(sources: Sequence[ValidationSource], num_classes: int,
                     ignore_label: int | None) -> list[tuple[ValidationSource, list[int], np.ndarray]]:
    """Per source: slice indices and a mask ``(S, Y, X)`` of labelled voxels; also checks label values."""
    out = []
    for source in sources:
        with open_image(source.image) as raw, open_image(source.labels) as lab:
            if tuple(raw.array.shape) != tuple(lab.array.shape):
                raise ValueError(f"validation image {source.image} has shape {tuple(raw.array.shape)} but labels "
                                 f"{source.labels} have {tuple(lab.array.shape)}")
            zs = parse_slices(source.slices, raw.array.shape[0])
            labels = np.stack([np.asarray(lab.array[z]) for z in zs]).astype(np.int64)
        valid = labels != ignore_label if ignore_label is not None else np.ones(labels.shape, bool)
        bad = np.unique(labels[valid & ((labels < 0) | (labels >= num_classes))])
        if bad.size:
            raise ValueError(f"validation labels {source.labels} hold values {bad[:10].tolist()} outside the "
                             f"{num_classes} classes of the members")
        out.append((source, zs, np.where(valid, labels, -1)))
    return out


def _predict_validation(predictors: Sequence[Any], dims: Sequence[int], data, num_classes: int,
                        tmp_dir: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every member's probabilities of the labelled validation voxels, once: ``(M, K, N)`` and truth ``(N,)``."""
    truth = np.concatenate([labels[labels >= 0] for _, _, labels in data])
    shape = (len(predictors), num_classes, truth.size)
    nbytes = 4 * int(np.prod(shape))
    if nbytes > MEMMAP_BYTES:
        logger.info("caching %.1f GB of validation probabilities in a temporary memory map", nbytes / 1e9)
        cache = np.lib.format.open_memmap(os.path.join(tmp_dir, "probabilities.npy"), mode="w+", dtype=np.float32,
                                          shape=shape)
    else:
        cache = np.empty(shape, np.float32)
    total = len(predictors) * sum(len(zs) for _, zs, _ in data)
    with progress_bar("Validation", total=total, unit="slice", enabled=progress) as advance:
        for m, (predictor, d) in enumerate(zip(predictors, dims)):
            offset = 0
            for source, zs, labels in data:
                with open_image(source.image) as raw:
                    probs = member_probabilities(predictor, raw.array, zs, spatial_dims=d)
                mask = labels >= 0
                n = int(mask.sum())
                cache[m, :, offset:offset + n] = probs[:, mask]
                offset += n
                advance(len(zs))
    return cache, truth


def _scores(confusion: np.ndarray, classes: list[str], background: int | None) -> dict[str, Any]:
    result = EvaluationResult.from_confusion(confusion, classes=classes, background=background)
    return {"val_mean_iou": result.mean_iou, "val_mean_iou_foreground": result.mean_iou_foreground,
            "val_iou": {c: v["iou"] for c, v in result.per_class.items()}}


@dataclass
class EnsembleResult:
    """What :func:`build_ensemble` wrote and chose."""

    out_dir: Path
    model_path: Path
    method: str
    names: list[str]
    weights: list[float]
    report: dict[str, Any] = field(default_factory=dict)


def build_ensemble(
    members: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    method: str = "weighted",
    top: int | None = None,
    step: float = 0.1,
    foreground: bool = False,
    val: ValidationSource | Sequence[ValidationSource] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> EnsembleResult:
    """Combine trained models into one ensemble artefact ``out_dir/model.pt`` and report their validation scores.

    Every member predicts the validation data once; the cached probabilities
    then score each member, the equal-weight mean, the majority vote and (for
    ``method="weighted"``) every weight vector of the simplex grid.

    Args:
        members: run directories, ``model.pt`` files or ``--seeds`` / ``--folds`` output folders.
        out_dir: receives ``model.pt`` (the ensemble; ``emseg predict`` takes
            it like one model) and ``ensemble.json`` (the report).
        method: ``"mean"``, ``"weighted"`` (WAE-Net: simplex weights
            maximising validation mean IoU) or ``"vote"`` (majority of labels).
        top: keep only the ``top`` members with the best validation score.
        step: weight grid step (0.1 or finer).
        foreground: score by mean IoU over the foreground classes instead of all classes.
        val: validation data; default: that of the members' training configurations.
        overwrite: replace an existing ``out_dir/model.pt``.

    Returns:
        An :class:`EnsembleResult`; ``report`` is the content of ``ensemble.json``.
    """
    from emseg.ensemble._runs import finite

    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    if top is not None and top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    simplex_grid(1, step=step)  # checks the step before any work

    out_dir = Path(out_dir)
    model_path = out_dir / MODEL_FILENAME
    # model.pt, then ensemble.json (each atomically): the report marks a finished build. A model.pt without
    # it is what a build killed between the two left; it is built again without needing --overwrite.
    if model_path.exists() and not overwrite:
        if (out_dir / REPORT_FILENAME).is_file():
            raise FileExistsError(f"{model_path} already exists; choose another --out or pass --overwrite")
        logger.warning("%s has no %s: an earlier build was interrupted; building it again", model_path,
                       REPORT_FILENAME)
    remove_stale_temporaries(out_dir)
    names, ckpts = load_members(members)
    classes = list(ckpts[0]["classes"])
    background = ckpts[0].get("background")
    metric = "val_mean_iou_foreground" if foreground else "val_mean_iou"
    if foreground and background is None:
        raise ValueError("foreground scoring needs a background class, but the members were trained with background: null")

    if val is None:
        try:
            sources = _validation_from_configs(ckpts, names)
        except ValueError as err:
            if method == "weighted" or top is not None:
                raise
            logger.warning("no validation scores: %s", err)
            sources = []
    else:
        sources = [val] if isinstance(val, ValidationSource) else list(val)
    report: dict[str, Any] = {"method": method, "metric": metric, "step": step, "top": top, "classes": classes,
                              "validation": [vars(s) for s in sources], "members": []}
    rows = [{"name": n, "path": str(p), "backend": c["backend"], "model": c["model"]["name"]}
            for n, p, c in zip(names, expand_members(members), ckpts)]
    kept = list(range(len(ckpts)))
    weights = [1.0 / len(ckpts)] * len(ckpts)
    with tempfile.TemporaryDirectory(prefix="emseg-ensemble-") as tmp_dir:
        if sources:
            data = _read_validation(sources, len(classes), ckpts[0].get("ignore_label"))
            predictors = [Predictor.from_checkpoint_dict(c) for c in ckpts]
            dims = [int(c["model"].get("spatial_dims", 2)) for c in ckpts]
            cache, truth = _predict_validation(predictors, dims, data, len(classes), tmp_dir, progress)
            del predictors
            report["validation_voxels"] = int(truth.size)
            k = len(classes)
            for m, row in enumerate(rows):
                _, confusion = score_weights(cache, truth, np.eye(len(rows))[m])
                row.update(_scores(confusion, classes, background))
            order = sorted(range(len(rows)), key=lambda m: -np.nan_to_num(rows[m][metric], nan=-1.0))
            kept = sorted(order[:top]) if top is not None else kept
            sub = cache[kept] if len(kept) < len(rows) else cache
            for m, row in enumerate(rows):
                row["kept"] = m in kept
            equal = np.full(len(kept), 1.0 / len(kept))
            _, confusion = score_weights(sub, truth, equal)
            report["mean"] = {"weights": equal.tolist(), **_scores(confusion, classes, background)}
            labels, _ = majority_vote([sub[i] for i in range(len(kept))])
            report["vote"] = _scores(confusion_from_labels(labels, truth, num_classes=k), classes, background)
            if method == "weighted":
                search = grid_search_weights(sub, truth, step=step, background=background, foreground=foreground,
                                             progress=progress)
                report["weighted"] = {"weights": search.weights.tolist(), "grid_points": len(search.grid),
                                      "ties": search.ties, **_scores(search.confusion, classes, background)}
                weights = search.weights.tolist()
            else:
                weights = equal.tolist()
            del sub, cache
        elif top is not None:
            raise ValueError("--top needs validation data")
        else:
            weights = [1.0 / len(kept)] * len(kept)

    # Members with weight 0 contribute nothing: leave them out of the artefact (they stay in the report).
    final = [(i, w) for i, w in zip(kept, weights) if w > 0 or method != "weighted"]
    for row in rows:
        row["weight"] = 0.0
    for i, w in final:
        rows[i]["weight"] = float(w)
    report["members"] = rows
    report["chosen"] = {"method": method, "members": [names[i] for i, _ in final], "weights": [w for _, w in final],
                        **({k: v for k, v in report.get(method, {}).items() if k != "weights"})}
    checkpoint = ensemble_checkpoint([ckpts[i] for i, _ in final], method=method, weights=[w for _, w in final],
                                     names=[names[i] for i, _ in final],
                                     selection=finite({"metric": metric, "step": step, "top": top,
                                                       "val_score": report["chosen"].get(metric)}))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILENAME).unlink(missing_ok=True)  # an old report never sits next to a new model
    save_checkpoint(model_path, checkpoint)
    with atomic_output(out_dir / REPORT_FILENAME, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(finite(report), indent=2, allow_nan=False))
    logger.info("ensemble of %d members (%s) -> %s", len(final), method, model_path)
    return EnsembleResult(out_dir, model_path, method, [names[i] for i, _ in final], [w for _, w in final],
                          finite(report))


def split_ensembles(paths: Sequence[str | os.PathLike]) -> list[tuple[str, dict[str, Any]]]:
    """Models -> ``(label, checkpoint)`` pairs, an ensemble artefact expanding to its members.

    ``label`` is the path, or ``"PATH[member name]"`` for an ensemble member.
    Used by ``emseg explain`` to make one map per member.
    """
    out = []
    for path in paths:
        ckpt = load_checkpoint(path)
        if ckpt["backend"] == ENSEMBLE_BACKEND:
            names = ckpt.get("member_names") or [f"member-{i}" for i in range(len(ckpt["members"]))]
            out += [(f"{path}[{name}]", member) for name, member in zip(names, ckpt["members"])]
        else:
            out.append((str(path), ckpt))
    return out
