"""Checkpoints load only as data (weights_only) and are validated."""

from __future__ import annotations

import pytest
import torch

from emseg.training import CheckpointError, load_checkpoint, save_checkpoint


def _minimal():
    return {"backend": "torch", "model": {"name": "unet2d", "options": {}, "in_channels": 1},
            "classes": ["a", "b"], "normalization": {"mean": 0.0, "std": 1.0}, "state": {"w": torch.zeros(2)}}


def test_round_trip_and_run_directory(tmp_path):
    save_checkpoint(tmp_path / "model.pt", _minimal())
    assert load_checkpoint(tmp_path)["classes"] == ["a", "b"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path):
    torch.save({"format": "emseg-model", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(format="other"), "not an emseg model"),
        (lambda d: d.update(format_version=99), "newer than this emseg"),
        (lambda d: d.pop("classes"), "missing field 'classes'"),
        (lambda d: d["model"].pop("in_channels"), "model.in_channels"),
        (lambda d: d.update(inference={"logit_offsets": [0.0]}), "logit_offsets' must be 2 finite numbers"),
        (lambda d: d.update(inference={"logit_offsets": [0.0, float("nan")]}), "emseg calibrate"),
    ],
)
def test_invalid_metadata_is_reported(tmp_path, change, match):
    data = {"format": "emseg-model", "format_version": 1, **_minimal()}
    change(data)
    torch.save(data, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "m.pt")


def test_missing_model_messages(tmp_path):
    with pytest.raises(CheckpointError, match="without model.pt"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="model not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(CheckpointError, match="could not be loaded"):
        load_checkpoint(tmp_path / "junk.pt")
