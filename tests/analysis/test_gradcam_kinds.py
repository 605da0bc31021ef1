"""Grad-CAM of the model kinds it used to refuse or get wrong: grain-filter models (the filtered channels
are part of the network input, as in prediction) and 3-D / hybrid 2D-3D members of an ensemble."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from emseg.analysis import compute_grad_cam
from emseg.cli import app
from emseg.data import add_grain_channels
from emseg.inference import Predictor
from emseg.models import build_model
from emseg.models import load_checkpoint, save_checkpoint

GRAIN = [30, 200]
CLASSES = ["background", "membrane"]
TINY_3D = {"unet3d-thin": {"features": [4, 8]}, "hybrid2d3d": {"features": [4, 8], "features_3d": 4}}


def _checkpoint(path, name, options, *, in_channels=1, spatial_dims=2, **extra):
    torch.manual_seed(0)
    net = build_model(name, in_channels=in_channels, num_classes=len(CLASSES), options=options)
    ckpt = {"backend": "torch", "classes": CLASSES,
            "model": {"name": name, "options": options, "in_channels": in_channels, "context_slices": 1,
                      "spatial_dims": spatial_dims},
            "normalization": {"mean": 120.0, "std": 40.0}, "state": net.state_dict(), **extra}
    save_checkpoint(path, ckpt)
    return load_checkpoint(path)


def _check_map(cam, shape):
    assert cam.shape == shape and cam.dtype == np.float32
    assert np.isfinite(cam).all() and 0.0 <= cam.min() and cam.max() <= 1.0
    assert cam.max() - cam.min() > 0.1  # not constant


def test_grain_filter_model_gets_its_filtered_channels(tmp_path, epfl_crop):
    _checkpoint(tmp_path / "grain.pt", "unet2d", {"features": [4, 8]}, in_channels=1 + len(GRAIN),
                preprocess={"grain_filter": GRAIN})
    predictor = Predictor.from_checkpoint(tmp_path / "grain.pt", precision="fp32")
    image = tifffile.imread(epfl_crop["raw"])[1, :96, :128]
    seen = []
    hook = predictor.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        result = compute_grad_cam(predictor, image, class_name="membrane", layer="decoders.0",
                                  mask=np.pad(np.ones((40, 60), bool), ((20, 36), (30, 38))))
    finally:
        hook.remove()
    # by hand: the slice and its two grain-filtered copies, normalised (what prediction feeds the network)
    expected = predictor.normalizer(add_grain_channels(image, GRAIN))
    assert len(seen) == 1 and tuple(seen[0].shape) == (1, 3, 96, 128)
    np.testing.assert_allclose(seen[0][0].numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(seen[0][0, 1:].numpy(), predictor._input(image)[1:])  # the predictor's own input
    _check_map(result.cam, (96, 128))
    assert result.target_pixels == 40 * 60

    out = tmp_path / "explain"
    target = np.zeros((1, 192, 256), np.uint8)
    target[0, 60:140, 50:200] = 1
    tifffile.imwrite(tmp_path / "mask.tif", target, photometric="minisblack")
    done = CliRunner().invoke(app, ["explain", str(tmp_path / "grain.pt"), str(epfl_crop["raw"]), "--class", "membrane",
                                    "--layer", "decoders.0", "--slice", "1", "--mask", str(tmp_path / "mask.tif"),
                                    "--out", str(out), "-q"])
    assert done.exit_code == 0, done.output
    _check_map(np.load(out / "gradcam_membrane.npy"), (192, 256))


def test_3d_and_hybrid_members_of_an_ensemble_are_explained(tmp_path, isbi_crop):
    from emseg.ensemble import ensemble_checkpoint

    members = [_checkpoint(tmp_path / f"{name}.pt", name, options, spatial_dims=3,
                           inference={"window_3d": [3, 64, 64]}) for name, options in TINY_3D.items()]
    save_checkpoint(tmp_path / "ensemble.pt", ensemble_checkpoint(members, method="mean", weights=[0.5, 0.5],
                                                                  names=list(TINY_3D)))
    mask = np.zeros((8, 96, 96), np.uint8)
    mask[:, 30:70, 20:60] = 1
    tifffile.imwrite(tmp_path / "mask.tif", mask, photometric="minisblack")
    for z, slices in ((4, [3, 6]), (0, [0, 3])):  # centred, and clipped at the first slice
        out = tmp_path / f"explain{z}"
        done = CliRunner().invoke(app, ["explain", str(tmp_path / "ensemble.pt"), str(isbi_crop["raw"]), "--class",
                                        "membrane", "--slice", str(z), "--mask", str(tmp_path / "mask.tif"),
                                        "--out", str(out), "-q"])
        assert done.exit_code == 0, done.output
        summary = json.loads((out / "gradcam_summary.json").read_text())
        assert [m["spatial_dims"] for m in summary["members"]] == [3, 3]
        assert [m["slices"] for m in summary["members"]] == [slices, slices]
        assert summary["members"][1]["model"].endswith("[hybrid2d3d]")
        for i in range(2):
            _check_map(np.load(out / f"member_{i}" / "gradcam_membrane.npy"), (96, 96))
            assert summary["members"][i]["classes"]["membrane"]["target_pixels"] == 40 * 40


@pytest.mark.parametrize("name", list(TINY_3D))
def test_3d_map_matches_a_hand_computed_grad_cam(tmp_path, isbi_crop, name):
    import torch.nn.functional as F

    _checkpoint(tmp_path / "m.pt", name, TINY_3D[name], spatial_dims=3, inference={"window_3d": [3, 64, 64]})
    predictor = Predictor.from_checkpoint(tmp_path / "m.pt", precision="fp32")
    stack = tifffile.imread(isbi_crop["raw"])[2:5, :40, :56]  # 40 x 56: padded by the network to its divisor
    mask = np.zeros((40, 56), bool)
    mask[10:30, 8:40] = True
    result = compute_grad_cam(predictor, stack, class_name="membrane", mask=mask, centre=1)
    _check_map(result.cam, (40, 56))

    # by hand: activations of the last encoder, gradients of the membrane logit summed over the mask on slice 1
    model = predictor.model.eval()
    acts = []
    hook = model.encoders[-1].register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        logits = model(torch.from_numpy(predictor.normalizer(stack))[None, None])
    finally:
        hook.remove()
    score = logits[0, 1, 1][torch.from_numpy(mask)].sum()
    (grads,) = torch.autograd.grad(score, acts[0])
    cam = torch.relu((grads.mean(dim=(2, 3, 4), keepdim=True) * acts[0]).sum(1, keepdim=True)).detach()
    padded = tuple(s + (-s) % d for s, d in zip(stack.shape, model.divisor))
    cam = F.interpolate(cam, size=padded, mode="trilinear", align_corners=False)[0, 0, 1, :40, :56].numpy()
    np.testing.assert_allclose(result.cam, cam / cam.max(), atol=1e-5)
    assert result.raw_max == pytest.approx(float(cam.max()), rel=1e-5)
