"""volume_fractions / compare_fractions on a hand-made two-cell volume."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.analysis import _fractions
from emseg.analysis import compare_fractions, volume_fractions

CLASSES = ["cytoplasm", "mito", "er"]


def _two_cells():
    """Cell 1: x 0..9 (200 voxels), 50 mito + 20 er. Cell 2: x 10..19 (200 voxels), 100 mito. Outside: x 20..23."""
    labels = np.zeros((2, 10, 24), np.uint8)
    cells = np.zeros(labels.shape, np.int32)
    cells[:, :, 0:10] = 1
    cells[:, :, 10:20] = 7                # ids need not be consecutive
    labels[:, 0:5, 0:5] = 1               # 50 mito in cell 1
    labels[0, 5:7, 0:10] = 2              # 20 er in cell 1
    labels[:, 0:5, 10:20] = 1             # 100 mito in cell 2
    labels[:, :, 20:] = 1                 # mito outside every cell: not counted
    return labels, cells


def test_fractions_per_cell():
    labels, cells = _two_cells()
    df = volume_fractions(labels, classes=CLASSES, cells=cells, voxel_size=(2, 1, 1))
    assert df.cell_id.tolist() == [1, 7]
    assert df.voxel_count.tolist() == [200, 200] and df.volume.tolist() == [400.0, 400.0]
    assert df.fraction_mito.tolist() == [0.25, 0.5]
    assert df.fraction_er.tolist() == [0.1, 0.0]
    assert df.voxels_mito.tolist() == [50, 100]
    assert "fraction_cytoplasm" not in df.columns


def test_fractions_whole_volume_mask_and_slabs(monkeypatch):
    labels, cells = _two_cells()
    whole = volume_fractions(labels, classes=CLASSES)
    assert whole.cell_id.tolist() == [0] and whole.voxel_count[0] == 480
    assert whole.fraction_mito[0] == pytest.approx((50 + 100 + 80) / 480)
    masked = volume_fractions(labels, classes=CLASSES, mask=cells == 7)
    assert masked.fraction_mito[0] == 0.5
    in_one_slab = volume_fractions(labels, classes=CLASSES, cells=cells)
    monkeypatch.setattr(_fractions, "_SLAB_VOXELS", 1)  # one z-slice at a time
    assert volume_fractions(labels, classes=CLASSES, cells=cells).equals(in_one_slab)


def test_compare_fractions_and_errors():
    labels, cells = _two_cells()
    other = labels.copy()
    other[other == 2] = 0                 # the prediction misses the er
    df = compare_fractions(labels, other, classes=CLASSES, cells=cells)
    er = df[df.class_name == "er"].set_index("cell_id")
    assert er.fraction_a[1] == 0.1 and er.fraction_b[1] == 0.0 and er.difference[1] == pytest.approx(-0.1)
    assert (df[df.class_name == "mito"].difference == 0).all()
    with pytest.raises(ValueError, match="outside the 2 classes"):
        volume_fractions(labels, classes=CLASSES[:2])
    with pytest.raises(ValueError, match="shape"):
        volume_fractions(labels, classes=CLASSES, cells=cells[:1])
