"""The few-label example configurations of the README stay valid (issue 18)."""

from __future__ import annotations

from pathlib import Path

from emseg.config import load_config
from emseg.pretraining import load_pretrain_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "few_labels"


def test_few_label_examples_validate(tmp_path):
    pre = load_pretrain_config(EXAMPLES / "pretrain_isbi.yaml")
    assert pre.pretraining.method == "mim" and len(pre.data.unlabelled) == 2
    (tmp_path / "pretrained").mkdir()
    train = load_config(EXAMPLES / "train_isbi_2slices.yaml", overrides={"model": {"init": str(tmp_path / "pretrained")}})
    assert train.data.train[0].slices == "5,15" and train.training.semi_supervised.method == "pseudo_label"
    assert train.model.options == pre.model.options  # the same model block: the start fits
    prop = load_config(EXAMPLES / "propagate_isbi.yaml")
    assert prop.data.train[0].slices == "5,15"
    assert "few_labels/pretrain_isbi.yaml" in (EXAMPLES.parents[1] / "README.md").read_text()
