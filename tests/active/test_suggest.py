"""emseg.active.suggest_slices and `emseg suggest`: hand-checked rankings, a noise slice ranked first."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from emseg.active import rank_blocks, suggest_slices, uncertainty_map
from emseg.inference import EnsemblePredictor

H = lambda *p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731 - entropy in nats, by hand

# Probabilities [p(class 0), p(class 1)] of two members for each pixel row of 2 x 2 slices; slice z holds the value z.
#   z=0: both members say 0.9/0.1 everywhere      -> disagreement 0,        entropy H(.9,.1)
#   z=1: member A says class 0, member B class 1  -> disagreement ln 2,     entropy ln 2
#   z=2: both members say 0.5/0.5                 -> disagreement 0,        entropy ln 2
#   z=3: row 0: A 0.8/0.2, B 0.2/0.8; row 1: both class 0
#        -> disagreement (ln 2 - H(.8,.2)) / 2,  entropy ln 2 / 2
TABLE = {
    0: ([[0.9, 0.1], [0.9, 0.1]], [[0.9, 0.1], [0.9, 0.1]]),
    1: ([[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]),
    2: ([[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]),
    3: ([[0.8, 0.2], [1.0, 0.0]], [[0.2, 0.8], [1.0, 0.0]]),
}


class TableMember:
    """An ensemble member (SegmentationPredictor) answering from TABLE by the slice's value."""

    classes = ["a", "b"]
    context_slices = 1
    spatial_dims = 2

    def __init__(self, which: int) -> None:
        self.which = which

    def predict_proba_slice(self, image: np.ndarray) -> np.ndarray:
        rows = np.asarray(TABLE[int(image[0, 0])][self.which], np.float32)  # (row, class)
        return np.repeat(rows.T[:, :, None], image.shape[1], axis=2)  # (K, Y, X)


VOLUME = np.repeat(np.arange(4, dtype=np.uint8)[:, None, None], 2, axis=1).repeat(2, axis=2)  # (4, 2, 2), slice z = z
ENSEMBLE = EnsemblePredictor([TableMember(0), TableMember(1)], method="mean")


def test_disagreement_ranking_hand_checked():
    found = suggest_slices(ENSEMBLE, VOLUME, k=4)  # auto: an ensemble of 2 -> disagreement
    assert [s.method for s in found] == ["disagreement"] * 4
    assert [s.z for s in found] == [1, 3, 0, 2]  # 0 and 2 tie at 0: the lower z first
    expected = {1: math.log(2), 3: (math.log(2) - H(0.8, 0.2)) / 2, 0: 0.0, 2: 0.0}
    for s in found:
        assert s.score == pytest.approx(expected[s.z], abs=1e-6)
        assert (s.y, s.x) == ((0, 2), (0, 2))


def test_entropy_ranking_hand_checked_and_k():
    found = suggest_slices(ENSEMBLE, VOLUME, k=3, method="entropy")
    assert [s.z for s in found] == [1, 2, 3]
    assert [s.score for s in found] == pytest.approx([math.log(2), math.log(2), math.log(2) / 2], abs=1e-6)
    assert H(0.9, 0.1) < math.log(2) / 2  # so slice 0 is the one left out of the top 3


def test_exclude_and_blocks():
    found = suggest_slices(ENSEMBLE, VOLUME, k=2, exclude="1")
    assert [s.z for s in found] == [3, 0]
    tiles = suggest_slices(ENSEMBLE, VOLUME, k=3, block=(1, 2), exclude=[1])
    assert [(s.z, s.y) for s in tiles] == [(3, (0, 1)), (0, (0, 1)), (0, (1, 2))]
    assert tiles[0].score == pytest.approx(math.log(2) - H(0.8, 0.2), abs=1e-6)  # row 0 of slice 3 alone


def test_tta_map_is_the_variance_over_flips():
    a = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # (K=2, 1, 2)
    b = np.array([[[0.0, 1.0]], [[1.0, 0.0]]])
    # per pixel each class is 1 in one map and 0 in the other: variance 0.25 per class, summed over 2 classes
    np.testing.assert_allclose(uncertainty_map([a, b], "tta"), np.full((1, 2), 0.5))
    np.testing.assert_allclose(uncertainty_map([a, a], "tta"), np.zeros((1, 2)))


@pytest.mark.parametrize("method", ["auto", "tta"])
def test_noise_slice_ranks_first(tiny_run, method):
    from emseg.inference import load_predictor

    from tests.conftest import EPFL

    volume = tifffile.imread(EPFL / "test_raw.tif")[:4, 300:428, 300:460].copy()
    volume[2] = np.random.default_rng(0).integers(0, 256, volume[2].shape, dtype=np.uint8)
    found = suggest_slices(load_predictor(tiny_run.run_dir, tta=False), volume, k=4, method=method)
    assert found[0].z == 2 and found[0].method == "tta"
    assert found[0].score > 3 * found[1].score  # by far (13x measured), not by rounding


def test_rank_refusals():
    with pytest.raises(ValueError, match="needs an ensemble"):
        suggest_slices(TableMember(0), VOLUME, method="disagreement")
    with pytest.raises(ValueError, match="--k must be at least 1"):
        rank_blocks({0: np.zeros((2, 2))}, method="entropy", k=0)
    with pytest.raises(ValueError, match="every slice of the image is excluded"):
        suggest_slices(ENSEMBLE, VOLUME, exclude="0:4")


def test_cli_suggest_json_and_table(tiny_run, tmp_path):
    from emseg.cli._main import app

    from tests.conftest import EPFL

    volume = tifffile.imread(EPFL / "test_raw.tif")[:3, 300:428, 300:460].copy()
    volume[1] = np.random.default_rng(0).integers(0, 256, volume[1].shape, dtype=np.uint8)
    image = tmp_path / "stack.tif"
    tifffile.imwrite(image, volume, photometric="minisblack")
    result = CliRunner().invoke(app, ["suggest", str(tiny_run.run_dir), str(image), "--k", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == "tta" and report["shape"] == [3, 128, 160]
    assert [s["z"] for s in report["suggestions"]][0] == 1 and len(report["suggestions"]) == 2
    table = CliRunner().invoke(app, ["suggest", str(tiny_run.run_dir), str(image), "--k", "1", "-q"])
    assert table.exit_code == 0 and "Slices to label next" in table.stdout


def test_cli_suggest_bad_inputs(tiny_run, tmp_path):
    from emseg.cli._main import app

    image = tmp_path / "stack.tif"
    tifffile.imwrite(image, np.zeros((2, 64, 64), np.uint8))
    result = CliRunner().invoke(app, ["suggest", str(tiny_run.run_dir), str(image), "--method", "disagreement"])
    assert result.exit_code == 2 and "needs an ensemble of two or more members" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["suggest", str(tiny_run.run_dir), str(image), "--k", "0"])
    assert result.exit_code == 2 and "--k must be at least 1" in result.output
