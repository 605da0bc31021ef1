"""Several training runs from one configuration: seed ensembles and k-fold cross-validation.

Each run is an ordinary run directory written by :func:`emseg.training.train`;
a run whose ``summary.json`` exists is finished and is not trained again, so an
interrupted ``--seeds`` / ``--folds`` job resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emseg.config import Config, config_from_dict, load_config
from emseg.ensemble._splits import fold_configs, freeze_validation_split
from emseg.io import atomic_output, write_csv_rows
from emseg.training import LAST_FILENAME, train

logger = logging.getLogger(__name__)

__all__ = ["FoldsResult", "SeedsResult", "run_scores", "train_folds", "train_once", "train_seeds"]

RANKING_FILENAME = "ranking.json"
FOLDS_FILENAME = "folds.json"
FOLDS_CSV = "folds.csv"


def _load(config: Config | str | os.PathLike) -> Config:
    return config if isinstance(config, Config) else load_config(config)


def finite(value: Any) -> Any:
    """``nan`` / ``inf`` to ``None``, numpy scalars to Python, recursively (for JSON)."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


    return True


def run_scores(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Validation scores of a finished run at its best epoch (from summary.json and metrics.jsonl).

    Returns:
        ``{"run_dir", "best_epoch", "epochs", "elapsed_s", "stop_reason", "val_mean_iou",
        "val_mean_iou_foreground", "val_iou": {class: IoU}}`` (``None`` where unknown).
    """
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    best_epoch = summary.get("best_epoch")
    record: dict[str, Any] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                if entry.get("epoch") == best_epoch:
                    record = entry
    return {"run_dir": str(run_dir), "best_epoch": best_epoch, "epochs": summary.get("epochs"),
            "elapsed_s": summary.get("elapsed_s"), "stop_reason": summary.get("stop_reason"),
            "val_mean_iou": summary.get("best_val_mean_iou", record.get("val_mean_iou")),
            "val_mean_iou_foreground": record.get("val_mean_iou_foreground"),
            "val_iou": record.get("val_iou", {})}


def train_once(config: Config, run_dir: str | os.PathLike, *, overwrite: bool = False, progress: bool = True) -> str:
    """Train into ``run_dir`` unless it holds a finished run of the same config.

    A finished run (``summary.json``) is skipped, an interrupted one resumes
    from ``last.pt``, a run of a different configuration raises ``ValueError``.

    Returns:
        ``"trained"``, ``"resumed"`` or ``"skipped (finished)"``.
    """
    run_dir = Path(run_dir)

    wanted = config.model_dump(mode="json")
    saved = run_dir / "config.yaml"
    if not overwrite and saved.is_file():
        previous = yaml.safe_load(saved.read_text())
        if previous != wanted:
            raise ValueError(f"{run_dir} holds a run of a different configuration ({saved}); use another --out "
                             "or pass --overwrite to train it again")
        if (run_dir / "summary.json").is_file():
            logger.info("%s: finished earlier, not trained again", run_dir)
            return "skipped (finished)"
    resume = not overwrite and (run_dir / LAST_FILENAME).is_file()
    logger.info("%s: %s", run_dir, "resuming" if resume else "training")
    train(config, run_dir, overwrite=not resume, resume=resume, progress=progress)
    return "resumed" if resume else "trained"


def _sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> float:
        value = row.get("val_mean_iou")
        return -math.inf if value is None else value

    return sorted(rows, key=key, reverse=True)


@dataclass
class SeedsResult:
    """Runs of :func:`train_seeds`, best validation mean IoU first (``rows``)."""

    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run_dirs(self) -> list[Path]:
        return [Path(r["run_dir"]) for r in self.rows]

    def top(self, k: int) -> list[Path]:
        """The ``k`` best run directories (Guay's top-k)."""
        return self.run_dirs[:k]


def train_seeds(config: Config | str | os.PathLike, out_dir: str | os.PathLike, *, seeds: list[int],
                overwrite: bool = False, progress: bool = True) -> SeedsResult:
    """Train one instance per seed (only ``training.seed`` differs) into ``out_dir/seed-<s>/``.

    When the config has no ``data.val``, its random validation split (drawn with
    the config's own seed) is frozen first, so every instance trains and is
    ranked on the same slices. Finished runs (``summary.json`` present) are
    skipped; interrupted ones resume from ``last.pt``.

    Writes ``out_dir/ranking.json``: the runs ranked by best validation mean IoU.

    Returns:
        A :class:`SeedsResult` whose ``rows`` hold :func:`run_scores` plus ``seed`` and ``rank``.
    """
    config = _load(config)
    if not seeds:
        raise ValueError("seeds is empty: pass e.g. --seeds 0,1,2,3")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    out_dir = Path(out_dir)
    base = freeze_validation_split(config).model_dump(mode="json")
    rows = []
    for seed in seeds:
        data = json.loads(json.dumps(base))
        data["training"]["seed"] = int(seed)
        seed_config = config_from_dict(data, source=f"(seed {seed})")
        run_dir = out_dir / f"seed-{seed}"
        status = train_once(seed_config, run_dir, overwrite=overwrite, progress=progress)
        rows.append({"seed": int(seed), "status": status, **run_scores(run_dir)})
    rows = _sorted_rows(rows)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    _write_json(out_dir / RANKING_FILENAME, {"kind": "seeds", "ranked_by": "val_mean_iou", "runs": rows})
    return SeedsResult(out_dir, rows)


@dataclass
class FoldsResult:
    """Runs of :func:`train_folds`: one row per fold plus ``mean`` over the folds."""

    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)

    @property
    def run_dirs(self) -> list[Path]:
        return [Path(r["run_dir"]) for r in self.rows]


def _mean(values: list[Any]) -> float | None:
    defined = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(defined) / len(defined) if defined else None


def train_folds(config: Config | str | os.PathLike, out_dir: str | os.PathLike, *, folds: int,
                split: str = "contiguous", overwrite: bool = False, progress: bool = True) -> FoldsResult:
    """K-fold cross-validation over the training slices, into ``out_dir/fold-<i>/``.

    Folds come from :func:`fold_configs` (deterministic; ``data.val`` is not
    used). Each fold's score is that of its best checkpoint, which is chosen on
    the same held-out fold (slightly optimistic, as usual for early stopping).

    Writes ``out_dir/folds.json`` and ``out_dir/folds.csv``: per fold the
    validation mean IoU, mean foreground IoU and per-class IoU, and their mean
    over the folds.
    """
    config = _load(config)
    if config.data.val is not None:
        logger.info("k-fold cross-validation: data.val is ignored; each fold validates on its held-out slices")
    configs = fold_configs(config, folds, split=split)
    out_dir = Path(out_dir)
    classes = list(config.data.classes)
    rows = []
    for i, fold_config in enumerate(configs):
        run_dir = out_dir / f"fold-{i}"
        logger.info("fold %d/%d: training on %s, validating on %s", i + 1, folds,
                    [s.slices for s in fold_config.data.train], [s.slices for s in fold_config.data.val or []])
        status = train_once(fold_config, run_dir, overwrite=overwrite, progress=progress)
        scores = run_scores(run_dir)
        rows.append({"fold": i, "status": status,
                     "train_slices": [{"image": s.image, "slices": s.slices} for s in fold_config.data.train],
                     "val_slices": [{"image": s.image, "slices": s.slices} for s in fold_config.data.val or []],
                     **scores})
    mean = {"val_mean_iou": _mean([r["val_mean_iou"] for r in rows]),
            "val_mean_iou_foreground": _mean([r["val_mean_iou_foreground"] for r in rows]),
            "val_iou": {c: _mean([r["val_iou"].get(c) for r in rows]) for c in classes}}
    _write_json(out_dir / FOLDS_FILENAME, {"kind": "folds", "folds": folds, "split": split, "classes": classes,
                                           "runs": rows, "mean": mean})
    _write_csv(out_dir / FOLDS_CSV, rows, mean, classes)
    return FoldsResult(out_dir, rows, mean, classes)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(finite(data), indent=2, allow_nan=False))


def _write_csv(path: Path, rows: list[dict[str, Any]], mean: dict[str, Any], classes: list[str]) -> None:
    header = ["fold", "val_mean_iou", "val_mean_iou_foreground", *[f"iou_{c}" for c in classes]]
    write_csv_rows(path, header, ([row["fold"], row["val_mean_iou"], row["val_mean_iou_foreground"],
                                   *[row["val_iou"].get(c) for c in classes]] for row in [*rows, {"fold": "mean", **mean}]))
