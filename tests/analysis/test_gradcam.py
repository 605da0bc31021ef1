"""Grad-CAM on networks whose answer is known: hand-set weights, a bottleneck-only U-Net, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
import typer
from torch import nn
from typer.testing import CliRunner

from emseg.analysis import (
    compute_grad_cam,
    explain,
    grad_cam,
    render_overlay,
    resolve_layer,
    save_overlay,
)
from emseg.data import Normalizer
from emseg.inference import Predictor

TL, BR = np.s_[:32, :32], np.s_[32:, 32:]  # quadrants of a 64 x 64 image


class _Toy(nn.Module):
    """Bottleneck = [avg-pool 2, 1x1 conv to (relu(x), relu(-x))]; logits = head(relu(upsample)).

    Channel 0 ("bright" evidence) is non-zero only where the input is positive,
    channel 1 ("dark") only where it is negative, so each class's Grad-CAM is
    known in closed form.
    """

    divisor = 2

    def __init__(self, head_weight: list[list[float]], head_bias: list[float]) -> None:
        super().__init__()
        features = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            features.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            features.bias.zero_()
        self.encoders = nn.ModuleList([nn.Sequential(nn.AvgPool2d(2), features, nn.ReLU())])
        self.head = nn.Conv2d(2, len(head_bias), 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(head_weight).view(len(head_bias), 2, 1, 1))
            self.head.bias.copy_(torch.tensor(head_bias))

    def forward(self, x):
        a = self.encoders[0](x)
        return self.head(torch.relu(F.interpolate(a, scale_factor=2, mode="nearest")))


def _squares(height=64, width=64, seed=0) -> np.ndarray:
    """Weak noise, a bright square in the top-left quadrant and a dark one in the bottom-right."""
    image = np.random.default_rng(seed).normal(0, 0.02, (height, width)).astype(np.float32)
    image[8:24, 8:24] = 2.0
    image[40:56, 40:56] = -2.0
    return image


def _bright_dark() -> Predictor:
    toy = _Toy([[0, 0], [1, 0], [0, 1]], [0.25, 0, 0])
    return Predictor(toy, classes=["background", "bright", "dark"], normalizer=Normalizer(0.0, 1.0), divisor=2,
                     device=torch.device("cpu"))


def _mass(cam: np.ndarray, region) -> float:
    return float(cam[region].sum() / cam.sum())


def test_class_maps_match_closed_form_and_lie_on_their_evidence():
    image = _squares()
    bright = compute_grad_cam(_bright_dark(), image, class_name="bright")
    dark = grad_cam(_bright_dark(), image, class_name="dark")
    # d(sum of bright logits)/dA = (1, 0) per pixel -> w = (>0, 0) -> cam ~ bilinear(relu(avgpool(x)))
    pooled = torch.relu(F.avg_pool2d(torch.from_numpy(image)[None, None], 2))
    expected = F.interpolate(pooled, size=image.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(bright.cam, expected / expected.max(), atol=1e-5)
    assert bright.cam.dtype == np.float32 and bright.cam.shape == image.shape
    assert bright.cam.min() >= 0 and bright.cam.max() == pytest.approx(1.0)
    assert bright.layer == "encoders.0" and bright.target == "prediction"
    assert bright.target_pixels == 16 * 16 and bright.raw_max > 0
    assert _mass(bright.cam, TL) > 0.95 and _mass(dark, BR) > 0.95
    assert bright.mass_in_target > 0.8


def test_padding_to_the_divisor_is_cropped_back():
    image = _squares(63, 71)
    cam = grad_cam(_bright_dark(), image, class_name=1)  # index works as well as the name
    assert cam.shape == (63, 71)
    assert _mass(cam, TL) > 0.95


def test_mask_target_differs_from_predicted_pixels():
    # "contrast" = relu(A_bright) + relu(A_dark): predicted on both squares
    toy = _Toy([[0, 0], [1, 1]], [0.25, 0])
    predictor = Predictor(toy, classes=["background", "contrast"], normalizer=Normalizer(0.0, 1.0), divisor=2,
                          device=torch.device("cpu"))
    image = _squares()
    predicted = compute_grad_cam(predictor, image, class_name="contrast")
    assert predicted.target_pixels == 2 * 16 * 16
    assert _mass(predicted.cam, TL) > 0.3 and _mass(predicted.cam, BR) > 0.3
    mask = np.zeros(image.shape, bool)
    mask[8:24, 8:24] = True  # only the bright square: the gradient reaches only the bright channel
    masked = compute_grad_cam(predictor, image, class_name="contrast", mask=mask)
    assert masked.target == "mask" and masked.target_pixels == mask.sum()
    assert _mass(masked.cam, TL) > 0.95
    assert np.abs(masked.cam - predicted.cam).max() > 0.5
    with pytest.raises(ValueError, match="no non-zero pixels"):
        grad_cam(predictor, image, class_name="contrast", mask=np.zeros(image.shape))
    with pytest.raises(ValueError, match="expected the slice's shape"):
        grad_cam(predictor, image, class_name="contrast", mask=mask[:10])


def test_class_predicted_nowhere_gives_an_empty_map():
    result = compute_grad_cam(_bright_dark(), np.zeros((32, 32), np.float32), class_name="bright")
    assert result.target_pixels == 0 and result.raw_max == 0 and not result.cam.any()


@pytest.fixture(scope="module")
def bottleneck_unet():
    """A tiny U-Net trained to find bright disks, with its skip connections cut.

    With the skips zeroed, all the decoder sees comes through the bottleneck, so
    the bottleneck's Grad-CAM must point at the disks.
    """
    from skimage.draw import disk

    from emseg.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(1)
    rng = np.random.default_rng(1)

    def scene(n, top_left_only=False):
        image = rng.normal(0, 0.3, (64, 64)).astype(np.float32)
        labels = np.zeros((64, 64), np.int64)
        hi = 26 if top_left_only else 58
        for _ in range(n):
            rr, cc = disk(tuple(rng.integers(6, hi, 2)), int(rng.integers(3, 6)), shape=image.shape)
            image[rr, cc] += 2.0
            labels[rr, cc] = 1
        return image, labels

    net = build_model("unet2d", in_channels=1, num_classes=2, options={"features": [4, 8, 16]})
    for dec, feat in zip(net.decoders, (8, 4)):  # input of each decoder: cat([upsampled, skip])
        weight = dec[0].conv.weight
        with torch.no_grad():
            weight[:, feat:] = 0
        weight.register_hook(lambda g, f=feat: torch.cat([g[:, :f], torch.zeros_like(g[:, f:])], 1))
    optimizer = torch.optim.Adam(net.parameters(), 5e-3)
    for _ in range(80):
        images, labels = zip(*[scene(4) for _ in range(4)])
        loss = F.cross_entropy(net(torch.from_numpy(np.stack(images))[:, None]), torch.from_numpy(np.stack(labels)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    return net, scene(3, top_left_only=True)


def test_unet_bottleneck_points_at_the_objects(bottleneck_unet):
    net, (image, labels) = bottleneck_unet
    result = compute_grad_cam(net, image, class_name=1)
    assert result.layer == "encoders.2"  # the last encoder is the bottleneck
    assert result.target_pixels > 0
    assert _mass(result.cam, TL) > 0.8


def test_whole_image_target_matches_monai_gradcam(bottleneck_unet):
    from monai.visualize import GradCAM

    net, (image, _) = bottleneck_unet
    ours = compute_grad_cam(net, image, class_name=1, mask=np.ones(image.shape, bool))
    raw = GradCAM(nn_module=net, target_layers="encoders.2").compute_map(torch.from_numpy(image)[None, None],
                                                                        class_idx=1)
    theirs = F.interpolate(raw, size=image.shape, mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    np.testing.assert_allclose(ours.cam * ours.raw_max, theirs, atol=1e-5 * max(1.0, ours.raw_max))


def test_layers_resolve_by_declaration_name_or_fail_listing_names(bottleneck_unet):
    net, (image, _) = bottleneck_unet
    assert resolve_layer(net, "decoders.1")[0] == "decoders.1"
    with pytest.raises(ValueError, match="one of: .*encoders.0.*decoders.1.*head"):
        resolve_layer(net, "encoder.99")
    with pytest.raises(ValueError, match="runs exactly once"):
        grad_cam(net, image, class_name=1, layer="pool")  # shared max-pool runs once per level

    class Declared(_Toy):
        gradcam_layer = "encoders.0.1"

    result = compute_grad_cam(Declared([[0, 0], [1, 0]], [0.25, 0]), _squares(), class_name=1)
    assert result.layer == "encoders.0.1"

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.body(x)

    with pytest.raises(ValueError, match="declares no bottleneck.*body"):
        grad_cam(Plain(), _squares(), class_name=1)
    with pytest.raises(ValueError, match="not one of the model's classes: background, bright, dark"):
        grad_cam(_bright_dark(), _squares(), class_name="mitochondrion")


def test_random_forest_is_refused():
    from emseg.models import RandomForestSegmenter

    predictor = Predictor(RandomForestSegmenter(), classes=["a", "b"], normalizer=Normalizer(0.0, 1.0))
    with pytest.raises(ValueError, match="random forest.*no"):
        grad_cam(predictor, np.zeros((16, 16)), class_name="b")


def test_overlay_is_rgb_with_the_slice_then_a_colour_bar(tmp_path):
    from PIL import Image

    image = np.tile(np.arange(48, dtype=np.uint8), (40, 1))
    cam = np.zeros((40, 48), np.float32)
    cam[:, 24:] = 1.0
    figure = render_overlay(image, cam)
    assert figure.shape[0] == 40 and figure.shape[1] > 48 + 10 and figure.dtype == np.uint8
    assert figure[20, 40, 0] > figure[20, 40, 2]  # inferno's top is yellow-white, not grey
    path = save_overlay(image, cam, tmp_path / "o.png", title="Grad-CAM")
    with Image.open(path) as png:
        assert png.mode == "RGB" and png.size[1] > 40 and png.size[0] >= figure.shape[1]
    with pytest.raises(ValueError, match="same 2-D"):
        render_overlay(image, cam[:10])


@pytest.fixture
def tiny_run_dir(tiny_run):
    return tiny_run.run_dir


def _cli() -> typer.Typer:
    from emseg.cli._cmd_explain import register

    app = typer.Typer()

    @app.callback()
    def _group() -> None:
        """emseg"""

    register(app)
    return app


def test_cli_explains_an_ensemble_with_a_mask(tiny_run_dir, epfl_crop, tmp_path):
    from PIL import Image

    mask = np.zeros((4, 192, 256), np.uint8)
    mask[:, 50:120, 60:200] = 1
    tifffile.imwrite(tmp_path / "mask.tif", mask, photometric="minisblack")
    out = tmp_path / "explain"
    args = ["explain", str(tiny_run_dir), str(tiny_run_dir / "model.pt"), str(epfl_crop["raw"]), "--class", "mitochondrion",
            "--class", "membrane", "--slice", "1", "--mask", str(tmp_path / "mask.tif"), "--out", str(out), "-q"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "gradcam_summary.json").read_text())
    assert summary["target"] == "mask" and summary["z"] == 1 and len(summary["members"]) == 2
    for member in ("member_0", "member_1"):
        for name in ("mitochondrion", "membrane"):
            cam = np.load(out / member / f"gradcam_{name}.npy")
            assert cam.shape == (192, 256) and cam.dtype == np.float32
            assert 0.0 <= cam.min() and cam.max() <= 1.0
            with Image.open(out / member / f"gradcam_{name}.png") as png:
                assert png.mode == "RGB" and png.size[0] > 256 and png.size[1] >= 192
    info = summary["members"][0]["classes"]["mitochondrion"]
    assert info["layer"] == "encoders.1" and info["target_pixels"] == 70 * 140
    np.testing.assert_array_equal(np.load(out / "member_0" / "gradcam_membrane.npy"),
                                  np.load(out / "member_1" / "gradcam_membrane.npy"))  # same model twice

    again = CliRunner().invoke(_cli(), args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = CliRunner().invoke(_cli(), ["explain", str(tiny_run_dir), str(epfl_crop["raw"]), "--class", "nucleus",
                                      "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "mitochondrion" in bad.output


def test_explain_25d_model_writes_tif_maps(tmp_path, epfl_crop):
    from emseg.models import build_model
    from emseg.models import save_checkpoint

    torch.manual_seed(0)
    net = build_model("unet2d", in_channels=3, num_classes=2, options={"features": [4, 8]})
    save_checkpoint(tmp_path / "m.pt", {
        "backend": "torch", "classes": ["background", "membrane"],
        "model": {"name": "unet2d", "options": {"features": [4, 8]}, "in_channels": 3, "context_slices": 3},
        "normalization": {"mean": 120.0, "std": 40.0}, "state": net.state_dict(),
    })
    summary = explain(tmp_path / "m.pt", epfl_crop["raw"], classes="membrane", out_dir=tmp_path / "o", z=0,
                      layer="decoders.0", array_format="tif")
    cam = tifffile.imread(tmp_path / "o" / "gradcam_membrane.tif")
    assert cam.shape == (192, 256) and cam.dtype == np.float32
    assert summary["members"][0]["context_slices"] == 3 and summary["members"][0]["layer"] == "decoders.0"
    assert (tmp_path / "o" / "gradcam_membrane.png").is_file()
    with pytest.raises(ValueError, match="slice 9 is outside"):
        explain(tmp_path / "m.pt", epfl_crop["raw"], classes="membrane", out_dir=tmp_path / "p", z=9)
