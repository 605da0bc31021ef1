"""score_segmentation / flatten_scores: hand-worked values, ignored pixels, empty classes, library agreement."""

import json
import math

import numpy as np
import pytest
import tifffile
import torch
from sklearn import metrics as skm
from typer.testing import CliRunner

from emseg.cli import app
from emseg.evaluation import (
    class_rand_info_scores,
    flatten_scores,
    hausdorff_distance,
    parse_metrics,
    parse_subsets,
    score_segmentation,
)
from emseg.ensemble import combine_probabilities, grid_search_weights
from emseg.evaluation import model_complexity

CLASSES = ["bg", "mito", "er", "empty"]


def _case():
    # 2 x 3 x 4; 9 marks an ignored truth pixel; class "empty" appears nowhere
    truth = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 9]],
                      [[0, 0, 0, 0], [1, 1, 0, 0], [2, 2, 2, 9]]])
    pred = np.array([[[0, 0, 1, 0], [0, 1, 1, 1], [2, 0, 0, 3]],
                     [[0, 0, 0, 0], [1, 1, 0, 2], [2, 2, 2, 1]]])
    return pred, truth


def test_pixel_group_hand_worked_with_ignored_pixels_and_empty_class():
    pred, truth = _case()
    scores = score_segmentation(pred, truth, classes=CLASSES, metrics="pixel", ignore_label=9,
                                subsets={"org": ["mito", "er", "empty"]})
    pix = scores["pixel"]
    # counted pixels: 22 (2 ignored, whatever was predicted there)
    # bg:   truth 11: TP 9, FN 2 (one -> mito, one -> er), FP 2 (mito -> bg, er -> bg), TN 9
    # mito: truth 6: TP 5, FN 1, FP 1 (bg -> mito), TN 15
    # er:   truth 5: TP 4, FN 1, FP 1 (bg -> er), TN 16
    bg, mito, er = pix["per_class"]["bg"], pix["per_class"]["mito"], pix["per_class"]["er"]
    assert (bg["tp"], bg["fp"], bg["fn"], bg["tn"]) == (9, 2, 2, 9)
    assert (mito["tp"], mito["fp"], mito["fn"], mito["tn"]) == (5, 1, 1, 15)
    assert (er["tp"], er["fp"], er["fn"], er["tn"]) == (4, 1, 1, 16)
    assert mito["iou"] == pytest.approx(5 / 7)
    assert mito["f1"] == pytest.approx(10 / 12)
    assert mito["specificity"] == pytest.approx(15 / 16)
    assert mito["npv"] == pytest.approx(15 / 16)
    assert er["accuracy"] == pytest.approx(20 / 22)
    # the empty class is undefined everywhere, not 0 and not a trivial 1
    empty = pix["per_class"]["empty"]
    for key in ("iou", "f1", "accuracy", "sensitivity", "specificity", "ppv", "npv"):
        assert math.isnan(empty[key]), key
    assert pix["mean_iou"] == pytest.approx((9 / 13 + 5 / 7 + 4 / 6) / 3)
    assert pix["mean_iou_foreground"] == pytest.approx((5 / 7 + 4 / 6) / 2)
    assert pix["mean_iou_subsets"]["org"] == pytest.approx((5 / 7 + 4 / 6) / 2)
    assert pix["accuracy"] == pytest.approx(18 / 22)
    flat = flatten_scores(scores)
    assert flat["miou_org"] == pytest.approx((5 / 7 + 4 / 6) / 2)
    assert math.isnan(flat["iou/empty"]) and flat["iou/mito"] == pytest.approx(5 / 7)


def test_pixel_group_matches_sklearn_and_monai_on_kept_pixels():
    from monai.metrics import compute_iou

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (3, 20, 20))
    truth[rng.random(truth.shape) < 0.1] = 255
    pred = np.where(rng.random(truth.shape) < 0.7, np.minimum(truth, 2), rng.integers(0, 3, truth.shape))
    names = ["a", "b", "c", "never"]
    scores = score_segmentation(pred, truth, classes=names, metrics="pixel", ignore_label=255)["pixel"]["per_class"]
    keep = truth != 255
    t, p = truth[keep], pred[keep]
    jaccard = skm.jaccard_score(t, p, labels=[0, 1, 2], average=None)
    for k, name in enumerate(names[:3]):
        assert scores[name]["iou"] == pytest.approx(jaccard[k])
        assert scores[name]["specificity"] == pytest.approx(skm.recall_score(t != k, p != k))
        assert scores[name]["npv"] == pytest.approx(skm.precision_score(t != k, p != k))
    # MONAI's IoU with ignore_empty=True also leaves a class absent from the truth undefined (nan);
    # MONAI has no ignore label, so compare on the maps with ignored pixels set to class 0 in both
    pred0, truth0 = np.where(keep, pred, 0), np.where(keep, truth, 0)
    onehot = lambda x: torch.from_numpy(np.stack([(x == k) for k in range(4)])[None].astype(np.float32))  # noqa: E731
    monai_iou = compute_iou(onehot(pred0), onehot(truth0), include_background=True, ignore_empty=True)[0].numpy()
    same = score_segmentation(pred0, truth0, classes=names, metrics="pixel")
    ours = np.array([same["pixel"]["per_class"][n]["iou"] for n in names])
    np.testing.assert_allclose(ours[:3], monai_iou[:3], rtol=1e-6)
    assert math.isnan(ours[3]) and math.isnan(monai_iou[3])


def test_auc_group_matches_sklearn_with_ignored_pixels():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, (2, 16, 16))
    truth[0, :2] = 7
    logits = rng.normal(size=(3, 2, 16, 16)) + 1.5 * np.stack([(truth == k) for k in range(3)])
    probs = np.exp(logits) / np.exp(logits).sum(0)
    scores = score_segmentation(probs.argmax(0), truth, classes=["a", "b", "c"], metrics="pixel,auc",
                                probabilities=probs, ignore_label=7)
    keep = truth != 7
    for k, name in enumerate("abc"):
        y = truth[keep] == k
        auc = scores["auc"]["per_class"][name]
        assert auc["auc_roc"] == pytest.approx(skm.roc_auc_score(y, probs[k][keep]), abs=2e-4)
        assert auc["average_precision"] == pytest.approx(skm.average_precision_score(y, probs[k][keep]), abs=2e-3)


def test_binary_task_sweep_and_membrane_boundary():
    truth = np.zeros((1, 9, 9), int)
    truth[0, 4, :] = 1  # one membrane line splits the slice into two cells
    prob = np.where(truth == 1, 0.75, 0.25)[None].repeat(2, 0).astype(float)
    prob[0] = 1 - prob[1]
    scores = score_segmentation((prob[1] > 0.5).astype(int), truth, classes=["cell", "membrane"], metrics="all",
                                probabilities=prob)
    sweep = scores["sweep"]
    assert sweep["class"] == "membrane"
    np.testing.assert_allclose(sweep["threshold"], np.arange(0, 1.01, 0.1))
    # thresholds 0.3 .. 0.7 separate 0.25 from 0.75 perfectly; 0.0 .. 0.2 call everything membrane
    assert sweep["iou"][5] == 1.0 and sweep["iou"][0] == pytest.approx(9 / 81)
    assert scores["boundary"]["membrane"]["v_rand"] == 1.0 and scores["boundary"]["membrane"]["v_info"] == 1.0


def test_class_rand_info_split_and_merge():
    truth = np.zeros((6, 6), int)
    truth[1:5, 1:3] = 1
    truth[1:5, 4:6] = 1  # two separate objects
    merged = truth.copy()
    merged[2:4, 3] = 1  # a bridge merges them
    split = truth.copy()
    split[3, 1:3] = 0  # the first object cut in two
    perfect = class_rand_info_scores(truth, truth, classes=["bg", "obj"])["obj"]
    assert perfect["v_rand"] == 1.0 and perfect["v_info"] == 1.0
    m = class_rand_info_scores(merged, truth, classes=["bg", "obj"])["obj"]
    s = class_rand_info_scores(split, truth, classes=["bg", "obj"])["obj"]
    assert m["v_rand_split"] == 1.0 and m["v_rand_merge"] < 1.0  # merging hurts merge only
    # hand-worked: 16 true pixels in 2 segments of 8 -> sum t^2 = 128; one predicted segment of 16 -> sum s^2 = 256
    assert m["v_rand_merge"] == pytest.approx(128 / 256)
    assert s["v_rand_split"] < 1.0
    # split: object 1 -> 4 + 2 predicted pixels, 2 lost pixels become singletons: sum p_ij^2 = 16+4+1+1 + 64 = 86
    assert s["v_rand_split"] == pytest.approx(86 / 128)
    empty = class_rand_info_scores(truth, truth, classes=["bg", "obj", "none"])["none"]
    assert all(math.isnan(v) for v in empty.values())


def test_hausdorff_ignores_unlabelled_pixels():
    truth = np.zeros((8, 8), int)
    truth[2:5, 2:5] = 1
    truth[7, 7] = 9  # unlabelled corner
    pred = truth.copy()
    pred[pred == 9] = 0
    pred[7, 7] = 1  # a false positive on an ignored pixel: would add a distance of ~3.6
    with_ignore = hausdorff_distance(pred, truth, classes=["bg", "fg"], ignore_label=9)
    assert with_ignore["fg"] == 0.0
    plain = hausdorff_distance(pred, np.where(truth == 9, 0, truth), classes=["bg", "fg"], percentile=100)
    assert plain["fg"] == pytest.approx(math.hypot(3, 3))


def test_objects_and_hausdorff_groups_per_slice():
    truth = np.zeros((2, 6, 6), int)
    truth[0, 1:3, 1:3] = 1
    truth[1, 3:5, 3:5] = 1
    pred = truth.copy()
    pred[1] = 0  # the second slice's object is missed
    scores = score_segmentation(pred, truth, classes=["bg", "fg"], metrics="objects,hausdorff", per_slice=True)
    obj = scores["objects"]["per_class"]["fg"]
    assert (obj["objects"], obj["detected"], obj["missed"]) == (2, 1, 1)
    assert scores["objects"]["detected_percent"] == 50.0
    # slice 0 perfect (0), slice 1 undefined (nothing predicted): the mean over defined slices is 0
    assert scores["hausdorff"]["per_class"]["fg"] == 0.0


def test_parse_metrics_and_subsets_errors():
    assert parse_metrics("all") == ["pixel", "auc", "sweep", "boundary", "objects", "hausdorff"]
    assert parse_metrics("hausdorff, pixel") == ["pixel", "hausdorff"]
    with pytest.raises(ValueError, match="Did you mean 'pixel'"):
        parse_metrics("pixels")
    assert parse_subsets(["org=mito,er"], CLASSES) == {"org": ["mito", "er"]}
    with pytest.raises(ValueError, match="do not exist"):
        parse_subsets(["org=mito,golgi"], CLASSES)
    with pytest.raises(ValueError, match="NAME=CLASS"):
        parse_subsets(["mito,er"], CLASSES)


def test_combine_probabilities_hand_worked():
    # the benchmark combines with the ensemble package's combine_probabilities (one implementation)
    a = np.array([[0.9, 0.2], [0.1, 0.8]])[:, None]  # (K=2, Z=1, X=2)
    b = np.array([[0.3, 0.4], [0.7, 0.6]])[:, None]
    c = np.array([[0.6, 0.1], [0.4, 0.9]])[:, None]
    np.testing.assert_allclose(combine_probabilities([a, b], method="mean")[:, 0], [[0.6, 0.3], [0.4, 0.7]])
    np.testing.assert_allclose(combine_probabilities([a, b], method="weighted", weights=[3, 1])[:, 0],
                               [[0.75, 0.25], [0.25, 0.75]])
    # pixel 0: a and c vote class 0, b class 1; pixel 1: all three vote class 1. The vote's probabilities are
    # (1 - eps) * vote fraction + eps * mean probability, eps = 1 / (2 (M + 1)) = 1/8 for M = 3
    eps = 1 / 8
    np.testing.assert_allclose(combine_probabilities([a, b, c], method="vote")[:, 0],
                               [[(1 - eps) * 2 / 3 + eps * 0.6, eps * 0.7 / 3],
                                [(1 - eps) * 1 / 3 + eps * 0.4, (1 - eps) + eps * 2.3 / 3]], rtol=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        combine_probabilities([a, b], method="weighted", weights=[1, -1])


def test_flop_counter_hand_worked():
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1, bias=False), torch.nn.ReLU())
    info = model_complexity(conv, in_channels=1, shape=(8, 8))
    # 2 output channels x 64 pixels x 9 multiply-adds, 2 FLOPs each
    assert info["flops"] == 2 * 2 * 64 * 9
    assert info["parameters"] == 18


def test_cli_evaluate_metrics_probabilities_and_subsets(tmp_path):
    pred, truth = _case()
    truth, pred = truth.astype(np.uint8), pred.astype(np.uint8)  # truth 9 = unlabelled
    probs = np.stack([(pred == k).astype(np.float32) * 0.9 + 0.025 for k in range(4)])  # (K, Z, Y, X)
    tifffile.imwrite(tmp_path / "p.tif", pred, photometric="minisblack")
    tifffile.imwrite(tmp_path / "t.tif", truth, photometric="minisblack")
    tifffile.imwrite(tmp_path / "probs.tif", probs.transpose(1, 0, 2, 3), imagej=True, metadata={"axes": "ZCYX"})
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "t.tif"),
                                      "--classes", ",".join(CLASSES), "--metrics", "all",
                                      "--probabilities", str(tmp_path / "probs.tif"),
                                      "--subset", "org=mito,er", "--per-slice", "--ignore-label", "9",
                                      "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "MIoU(org)" in result.output and "auc scores" in result.output and "Hausdorff" in result.output
    saved = json.loads((tmp_path / "s.json").read_text())
    assert set(saved) >= {"pixel", "auc", "boundary", "objects", "hausdorff"}
    assert saved["pixel"]["per_class"]["empty"]["iou"] is None  # undefined -> null in JSON
    assert saved["pixel"]["mean_iou_subsets"]["org"] == pytest.approx((5 / 7 + 4 / 6) / 2)
    keep = truth != 9
    assert saved["auc"]["per_class"]["mito"]["auc_roc"] == pytest.approx(
        skm.roc_auc_score(truth[keep] == 1, probs[1][keep]))
    bad = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "t.tif"),
                                   "--classes", ",".join(CLASSES), "--metrics", "pixels", "--ignore-label", "9"])
    assert bad.exit_code == 2 and "Did you mean 'pixel'" in " ".join(bad.output.split())


def test_weight_search_prefers_the_member_that_is_right_on_validation():
    truth = np.array([[[0, 1, 1, 0]]])
    good = np.stack([(truth == 0) * 0.6 + 0.2, (truth == 1) * 0.6 + 0.2]).astype(np.float32)  # (K, Z, Y, X), right
    bad = np.stack([(truth == 1) * 0.9 + 0.05, (truth == 0) * 0.9 + 0.05]).astype(np.float32)  # confidently wrong
    cache = np.stack([good.reshape(2, -1), bad.reshape(2, -1)])  # (M, K, N)
    weights = grid_search_weights(cache, truth.ravel(), background=0).weights
    # equal weights follow the confident wrong member; the search weights the right one up
    assert combine_probabilities([good, bad], method="mean").argmax(0).tolist() != truth.tolist()
    assert weights[0] > weights[1] and weights.sum() == pytest.approx(1)
    assert combine_probabilities([good, bad], method="weighted", weights=weights).argmax(0).tolist() == truth.tolist()
