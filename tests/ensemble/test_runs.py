"""Seed ensembles and k-fold cross-validation: run directories, rankings, fold partitions, resumability."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from emseg.config import load_config
from emseg.ensemble import fold_configs, freeze_validation_split, train_folds, train_seeds, training_slices

from conftest import tiny_ensemble_config as tiny_config_text


def test_seeds_train_rank_and_skip_finished(seed_runs, caplog):
    cfg, result = seed_runs
    out = result.out_dir
    assert sorted(p.name for p in result.run_dirs) == ["seed-0", "seed-1"]
    for seed in (0, 1):
        run = out / f"seed-{seed}"
        assert (run / "model.pt").is_file() and (run / "summary.json").is_file()
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["training"]["seed"] == seed
        assert saved["data"]["val"][0]["slices"] == "3"  # same validation slices for every seed
    ranking = json.loads((out / "ranking.json").read_text())
    scores = [r["val_mean_iou"] for r in ranking["runs"]]
    assert scores == sorted(scores, reverse=True) and [r["rank"] for r in ranking["runs"]] == [1, 2]
    for row in ranking["runs"]:
        summary = json.loads((out / f"seed-{row['seed']}" / "summary.json").read_text())
        assert row["val_mean_iou"] == pytest.approx(summary["best_val_mean_iou"])
        assert set(row["val_iou"]) == set(load_config(cfg).data.classes)
    # the two seeds differ only in training.seed, and their models differ
    c0 = yaml.safe_load((out / "seed-0" / "config.yaml").read_text())
    c1 = yaml.safe_load((out / "seed-1" / "config.yaml").read_text())
    c0["training"].pop("seed"), c1["training"].pop("seed")
    assert c0 == c1

    mtimes = {s: (out / f"seed-{s}" / "model.pt").stat().st_mtime_ns for s in (0, 1)}
    with caplog.at_level("INFO", logger="emseg.ensemble._runs"):
        again = train_seeds(cfg, out, seeds=[0, 1], progress=False)
    assert [r["status"] for r in again.rows] == ["skipped (finished)"] * 2
    assert {s: (out / f"seed-{s}" / "model.pt").stat().st_mtime_ns for s in (0, 1)} == mtimes
    assert "not trained again" in caplog.text


def test_seeds_refuse_a_changed_config_in_the_same_folder(seed_runs, tmp_path):
    cfg, result = seed_runs
    config = load_config(cfg, overrides={"training": {"learning_rate": 0.01}})
    with pytest.raises(ValueError, match="different configuration"):
        train_seeds(config, result.out_dir, seeds=[0], progress=False)


def test_seeds_freeze_the_random_validation_split(tmp_path, epfl_crop):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config_text(epfl_crop, val=False).replace("classes:", "val_fraction: 0.25\n  classes:"))
    config = load_config(cfg)
    frozen = freeze_validation_split(config)
    from emseg.data import load_training_data

    train, val = load_training_data(config)  # the trainer's own random split for seed 0
    f_train, f_val = load_training_data(frozen)
    assert f_val.names == val.names and f_train.names == train.names
    assert len(f_val) == 1 and len(f_train) == 3
    # some other seed draws another random split; the frozen config keeps seed 0's split whatever its seed
    other = next(s for s in range(1, 50)
                 if load_training_data(load_config(cfg, overrides={"training": {"seed": s}}))[1].names != val.names)
    reseeded = frozen.model_copy(update={"training": frozen.training.model_copy(update={"seed": other})})
    assert load_training_data(reseeded)[1].names == val.names
    assert freeze_validation_split(frozen) is frozen  # already explicit: unchanged


def test_fold_partitions_contiguous_and_interleaved(tmp_path, epfl_crop):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config_text(epfl_crop, val=False))
    config = load_config(cfg)
    assert training_slices(config) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    contiguous = fold_configs(config, 2)
    assert [(c.data.train[0].slices, c.data.val[0].slices) for c in contiguous] == [("2:4", "0:2"), ("0:2", "2:4")]
    interleaved = fold_configs(config, 2, split="interleaved")
    assert [(c.data.train[0].slices, c.data.val[0].slices) for c in interleaved] == [("1,3", "0,2"), ("0,2", "1,3")]
    three = fold_configs(config, 3)  # sizes 2, 1, 1
    assert [c.data.val[0].slices for c in three] == ["0:2", "2", "3"]
    for c in three:  # everything else is unchanged
        assert c.model == config.model and c.training == config.training and c.data.classes == config.data.classes
    with pytest.raises(ValueError, match="more than the 4 training slices"):
        fold_configs(config, 5)
    with pytest.raises(ValueError, match="at least 2"):
        fold_configs(config, 1)
    with pytest.raises(ValueError, match="interleaved"):
        fold_configs(config, 2, split="random")


def test_two_fold_cross_validation_writes_the_table(tmp_path, epfl_crop, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config_text(epfl_crop, val=True))  # data.val is ignored for folds
    with caplog.at_level("INFO", logger="emseg.ensemble._runs"):
        result = train_folds(cfg, tmp_path / "folds", folds=2, progress=False)
    assert "data.val is ignored" in caplog.text
    # training slices are 0:3 of the entry: contiguous folds [0, 1] and [2]
    saved = [yaml.safe_load((tmp_path / "folds" / f"fold-{i}" / "config.yaml").read_text()) for i in range(2)]
    assert [s["data"]["val"][0]["slices"] for s in saved] == ["0:2", "2"]
    assert [s["data"]["train"][0]["slices"] for s in saved] == ["2", "0:2"]
    table = json.loads((tmp_path / "folds" / "folds.json").read_text())
    assert len(table["runs"]) == 2 and table["split"] == "contiguous"
    values = [r["val_mean_iou"] for r in table["runs"]]
    assert table["mean"]["val_mean_iou"] == pytest.approx(sum(values) / 2)
    for name in ("background", "membrane"):
        per_fold = [r["val_iou"][name] for r in table["runs"] if r["val_iou"][name] is not None]
        assert table["mean"]["val_iou"][name] == pytest.approx(sum(per_fold) / len(per_fold))
    lines = (tmp_path / "folds" / "folds.csv").read_text().splitlines()
    assert lines[0].startswith("fold,val_mean_iou,val_mean_iou_foreground,iou_background")
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "mean"]
    assert math.isclose(float(lines[3].split(",")[1]), table["mean"]["val_mean_iou"])


def test_cli_train_seeds_reuses_finished_runs_and_rejects_bad_options(seed_runs):
    from typer.testing import CliRunner

    from emseg.cli import app

    cfg, result = seed_runs
    runner = CliRunner()
    out = runner.invoke(app, ["train", str(cfg), "--seeds", "0,1", "--out", str(result.out_dir), "--quiet"])
    assert out.exit_code == 0, out.output
    assert "skipped" in out.output and "ranking.json" in out.output
    both = runner.invoke(app, ["train", str(cfg), "--seeds", "0,1", "--folds", "2", "--out", str(result.out_dir)])
    assert both.exit_code == 2 and "cannot be combined" in both.output
    bad = runner.invoke(app, ["train", str(cfg), "--seeds", "a,b", "--out", str(result.out_dir)])
    assert bad.exit_code == 2 and "--seeds" in bad.output
    folds = runner.invoke(app, ["train", str(cfg), "--folds", "9", "--out", str(result.out_dir / "f")])
    assert folds.exit_code == 2 and "more than the 3 training slices" in folds.output
