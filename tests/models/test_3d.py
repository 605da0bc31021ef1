"""3-D, anisotropic and valid-padding networks: shapes, pooling, ablations, parameter groups, size arithmetic."""

from __future__ import annotations

import pytest
import torch

from emseg.models import MODELS, build_model, count_parameters
from emseg.models._hybrid import Hybrid2d3d, _PyramidLevel
from emseg.models._unet_original import valid_unet_output_size

THREE_D = ["unet3d-thin", "unet3d-thick", "hybrid2d3d"]
TINY = {"unet3d-thin": {"features": [4, 8, 16]}, "unet3d-thick": {"features": [4, 8, 16]},
        "hybrid2d3d": {"features": [4, 8, 16], "features_3d": 4}}


def _conv_kernels(module: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.kernel_size) for m in module.modules() if isinstance(m, torch.nn.Conv3d)]


@pytest.mark.parametrize("name", THREE_D)
def test_3d_models_take_anisotropic_windows(name):
    spec = MODELS.get(name)
    assert spec.spatial_dims == 3 and spec.default_patch is not None and len(spec.default_patch) == 3
    torch.manual_seed(0)
    net = build_model(name, in_channels=1, num_classes=3, options=TINY[name]).eval()
    with torch.no_grad():
        # z = 5 sections (not a multiple of the thick U-Net's z pooling), y/x not multiples of the divisor
        out = net(torch.randn(2, 1, 5, 36, 44))
    assert out.shape == (2, 3, 5, 36, 44)
    assert count_parameters(net) > 0


def test_default_windows():
    assert MODELS.get("unet3d-thin").default_patch == (5, 256, 256)
    assert MODELS.get("hybrid2d3d").default_patch == (5, 256, 256)
    assert MODELS.get("unet3d-thick").default_patch[0] > 5


def test_thin_pools_only_in_plane_thick_along_all_axes():
    thin = build_model("unet3d-thin", in_channels=1, num_classes=2, options={"features": [4, 8, 16]})
    thick = build_model("unet3d-thick", in_channels=1, num_classes=2, options={"features": [4, 8, 16]})
    assert tuple(thin.pool.kernel_size) == (1, 2, 2) and thin.divisor == (1, 4, 4)
    assert tuple(thick.pool.kernel_size) == (2, 2, 2) and thick.divisor == (4, 4, 4)
    assert set(_conv_kernels(thin.encoders)) == {(3, 3, 3)}


def test_thin_unet_mixes_neighbouring_sections():
    """3x3x3 kernels: changing section 0 changes the prediction of its neighbour, section 1."""
    torch.manual_seed(0)
    net = build_model("unet3d-thin", in_channels=1, num_classes=2, options={"features": [4, 8]}).eval()
    x = torch.randn(1, 1, 3, 32, 32)
    changed = x.clone()
    changed[:, :, 0] += 5.0
    with torch.no_grad():
        assert not torch.allclose(net(changed)[:, :, 1], net(x)[:, :, 1])


def test_hybrid_outputs_dict_in_training_tensor_in_eval():
    torch.manual_seed(0)
    net = build_model("hybrid2d3d", in_channels=1, num_classes=2, options=TINY["hybrid2d3d"])
    x = torch.randn(2, 1, 5, 32, 40)
    net.train()
    out = net(x)
    assert set(out) == {"main", "aux2d"}
    assert out["main"].shape == out["aux2d"].shape == (2, 2, 5, 32, 40)
    assert net.aux_loss_weights == {"aux2d": 0.33}
    net.eval()
    with torch.no_grad():
        assert isinstance(net(x), torch.Tensor) and net(x).shape == (2, 2, 5, 32, 40)


def test_hybrid_ablation_no_multi_loss_same_network_single_output():
    opts = dict(TINY["hybrid2d3d"])
    full = build_model("hybrid2d3d", in_channels=1, num_classes=2, options=opts)
    single = build_model("hybrid2d3d", in_channels=1, num_classes=2, options={**opts, "multi_loss": False})
    assert single.aux_loss_weights == {}
    # same architecture: the 2-D head still feeds the 3-D part, it is only not supervised
    assert {k: v.shape for k, v in full.state_dict().items()} == {k: v.shape for k, v in single.state_dict().items()}
    single.train()
    assert isinstance(single(torch.randn(1, 1, 5, 16, 16)), torch.Tensor)


def test_hybrid_3x3x3_placement_and_ablation():
    # default depth 3 (features of 4 levels): 3x3x3 first convs in encoder blocks 0, 1 and decoder blocks 1, 2
    net = Hybrid2d3d(1, 2, features=(4, 8, 16, 32), features_3d=4)
    assert [_conv_kernels(b)[0] for b in net.encoders] == [(3, 3, 3), (3, 3, 3), (1, 3, 3), (1, 3, 3)]
    assert [_conv_kernels(b)[0] for b in net.decoders] == [(1, 3, 3), (3, 3, 3), (3, 3, 3)]
    # the second convolution of every block is 1x3x3
    assert all(_conv_kernels(b)[1] == (1, 3, 3) for b in [*net.encoders, *net.decoders])
    unet = [*net.encoders, *net.decoders]
    assert sum(k == (3, 3, 3) for b in unet for k in _conv_kernels(b)) == 4
    plain = Hybrid2d3d(1, 2, features=(4, 8, 16, 32), features_3d=4, use_3x3x3=False)
    kernels_2d = [k for b in [*plain.encoders, *plain.decoders] for k in _conv_kernels(b)]
    assert len(kernels_2d) == 14 and set(kernels_2d) == {(1, 3, 3)}
    # pooling and up-convolutions never touch z in the 2-D part
    assert tuple(plain.pool.kernel_size) == (1, 2, 2)
    assert {tuple(m.kernel_size) for m in plain.upsamples.modules() if isinstance(m, torch.nn.ConvTranspose3d)} == {(1, 2, 2)}
    # the 3-D part is unchanged by this ablation
    assert _conv_kernels(plain.conv_in) == [(3, 3, 3)] and count_parameters(plain.conv_out) == count_parameters(net.conv_out)


def test_hybrid_ablation_without_pyramid():
    with_p = Hybrid2d3d(1, 2, features=(4, 8), features_3d=4)
    without = Hybrid2d3d(1, 2, features=(4, 8), features_3d=4, pyramid=False)
    assert sum(isinstance(m, _PyramidLevel) for m in with_p.modules()) == 2
    assert without.pyramid is None and not any(isinstance(m, _PyramidLevel) for m in without.modules())
    # each pyramid level: a 3x3x3 conv 4 -> 4 (4*4*27 + 4) and a batch norm (4 + 4) = 444 parameters
    assert count_parameters(with_p) - count_parameters(without) == 2 * 444
    # the 3-D part sees the 2-D features (4) concatenated with the 2-D class scores (2)
    assert with_p.conv_in.conv.in_channels == 4 + 2
    with torch.no_grad():
        assert without.eval()(torch.randn(1, 1, 5, 16, 16)).shape == (1, 2, 5, 16, 16)


def test_hybrid_pyramid_handles_a_single_section():
    net = Hybrid2d3d(1, 2, features=(4, 8), features_3d=4).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 1, 20, 20)).shape == (1, 2, 1, 20, 20)


def test_hybrid_param_groups_partition_the_parameters():
    net = build_model("hybrid2d3d", in_channels=1, num_classes=2, options=TINY["hybrid2d3d"])
    groups = net.param_groups()
    assert [g["name"] for g in groups] == ["unet2d", "module3d", "heads"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # disjoint
    assert set(ids) == {id(p) for p in net.parameters()}  # complete
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in [*net.head2d.parameters(), *net.head3d.parameters()]}
    # usable as optimizer groups with their own weight decay
    opt = torch.optim.SGD([{**g, "weight_decay": wd} for g, wd in zip(groups, (1e-4, 1e-3, 0.0))], lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 1e-3, 0.0]


def test_unet_original_size_arithmetic():
    # Ronneberger's figure 1: 572 -> 570 -> 568 | 284 -> 280 | 140 -> 136 | 68 -> 64 | 32 -> 28,
    # up: 56 -> 52, 104 -> 100, 200 -> 196, 392 -> 388
    assert valid_unet_output_size(572, 4) == 388
    assert valid_unet_output_size(570, 4) is None  # 566 / 2 = 283 -> 279: odd before the third pooling
    assert valid_unet_output_size(188, 4) == 4  # bottleneck 8 -> 4, up 8-4=4, 8-4=4 ... the smallest valid input
    assert valid_unet_output_size(172, 4) is None
    assert valid_unet_output_size(30, 1) == 14  # 30 -> 26 -> 13 -> 9 -> 18 -> 14


def test_unet_original_full_size_on_meta_device():
    with torch.device("meta"):
        net = build_model("unet-original", in_channels=1, num_classes=2)
        out = net(torch.empty(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)
    assert net.output_margin == 92 and net.alignment == 16
    assert net.output_size(572) == 388 and net.valid_input_size(572) == 572 and net.valid_input_size(573) == 588
    assert net.valid_input_size(1) == 188
    # parameter count by hand: double 3x3 convs per level, 2x2 up-convolutions, 1x1 head (the paper's ~31 M)
    f, k = [64, 128, 256, 512, 1024], 2
    expected, cin = 0, 1
    for c in f:
        expected += cin * c * 9 + c + c * c * 9 + c
        cin = c
    for hi, lo in zip(f[:0:-1], f[-2::-1]):
        expected += hi * lo * 4 + lo + 2 * lo * lo * 9 + lo + lo * lo * 9 + lo
    expected += f[0] * k + k
    assert count_parameters(net) == expected == 31_030_658
    assert MODELS.get("unet-original").valid_padding and MODELS.get("unet-original").spatial_dims == 2


def test_unet_original_tiny_shapes_and_bad_size():
    net = build_model("unet-original", in_channels=1, num_classes=3, options={"features": [4, 8]})
    assert net.output_margin == 8  # 4 per level-0 double conv on the way down, 4 on the way up
    assert net(torch.randn(2, 1, 30, 34)).shape == (2, 3, 14, 18)
    with pytest.raises(ValueError, match="use 32"):
        net(torch.randn(1, 1, 31, 34))
