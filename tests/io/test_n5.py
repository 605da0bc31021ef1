"""N5 reading: containers written here by hand from the N5 file-system specification."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from emseg.io import ImageFormatError, open_image, read_image


def _write_n5(root: Path, dataset: str, array: np.ndarray, block: tuple[int, int, int], *, compression: str,
              skip: set[tuple[int, int, int]] = frozenset(), resolution=None) -> None:
    """Write ``array`` (z, y, x) as an N5 dataset: dims/blockSize/block paths x first, big-endian, x fastest."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    folder = root / dataset
    folder.mkdir(parents=True)
    attrs = {"dimensions": list(array.shape[::-1]), "blockSize": list(block[::-1]), "dataType": str(array.dtype),
             "compression": {"type": compression}}
    if resolution is not None:
        attrs["resolution"] = list(resolution)
    (folder / "attributes.json").write_text(json.dumps(attrs))
    grid = [-(-s // b) for s, b in zip(array.shape, block)]
    for iz in range(grid[0]):
        for iy in range(grid[1]):
            for ix in range(grid[2]):
                if (iz, iy, ix) in skip:
                    continue
                part = array[iz * block[0]:(iz + 1) * block[0], iy * block[1]:(iy + 1) * block[1],
                             ix * block[2]:(ix + 1) * block[2]]
                header = struct.pack(">HH", 0, 3) + struct.pack(">3I", *part.shape[::-1])
                body = part.astype(part.dtype.newbyteorder(">")).tobytes()
                if compression == "gzip":
                    body = gzip.compress(body)
                path = folder / str(ix) / str(iy) / str(iz)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(header + body)


@pytest.mark.parametrize("compression", ["raw", "gzip"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_n5_reads_like_numpy(tmp_path, compression, dtype):
    rng = np.random.default_rng(0)
    data = (rng.random((5, 23, 37)) * 1000).astype(dtype)
    # border blocks are smaller (5 = 2 + 2 + 1 along z, 23 = 8 + 8 + 7, 37 = 16 + 16 + 5); block (1, 1, 2) missing
    _write_n5(tmp_path / "vol.n5", "em/raw", data, (2, 8, 16), compression=compression, skip={(1, 1, 2)},
              resolution=[4.0, 4.0, 40.0])
    expected = data.copy()
    expected[2:4, 8:16, 32:37] = 0  # a missing block reads as zeros
    with open_image(tmp_path / "vol.n5/em/raw") as image:
        assert image.format == "n5" and image.shape == (5, 23, 37) and image.dtype == np.dtype(dtype)
        assert image.voxel_size == (40.0, 4.0, 4.0)  # N5 "resolution" is x, y, z
        np.testing.assert_array_equal(image.array[1:4, 5:20, 10:35], expected[1:4, 5:20, 10:35])
        np.testing.assert_array_equal(image.array[3], expected[3])
        np.testing.assert_array_equal(image.array[:, -1, ::3], expected[:, -1, ::3])
    np.testing.assert_array_equal(read_image(tmp_path / "vol.n5"), expected)  # the only dataset


def test_n5_missing_dataset_names_the_datasets(tmp_path):
    _write_n5(tmp_path / "vol.n5", "raw", np.zeros((2, 4, 4), np.uint8), (2, 4, 4), compression="raw")
    with pytest.raises(ImageFormatError, match=r"no N5 dataset at 'labels'.*\['raw'\]"):
        open_image(tmp_path / "vol.n5/labels")

