"""UnlabelledVolumes keeps decoded TIFF pages: the same patches as reading each crop, each page decoded once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from emseg.data import _unlabelled
from emseg.data._unlabelled import UnlabelledVolumes

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "isbi2012-membranes"


@pytest.fixture(scope="module")
def compressed_tif(tmp_path_factory) -> Path:
    """Six real ISBI sections, deflate-compressed one page per section (as the shared files are)."""
    path = tmp_path_factory.mktemp("unlabelled") / "isbi6.tif"
    tifffile.imwrite(path, tifffile.imread(DATA / "train_raw.tif")[:6, :192, :160], compression="zlib")
    return path


def _draw(path: Path, *, patch_size, context: int = 1, cache: bool, monkeypatch) -> tuple[np.ndarray, list]:
    monkeypatch.setattr(_unlabelled, "SLICE_CACHE_BYTES", 256 * 2**20 if cache else 0)
    with UnlabelledVolumes([(str(path), None)], patch_size=patch_size, context=context) as data:
        array = data.volumes[0].array
        reads, read = [], array._read_slices

        def counting(zs):
            reads.extend(zs)
            return read(zs)

        array._read_slices = counting
        patches = data.sample(40, np.random.default_rng(7))
    return patches, reads


@pytest.mark.parametrize("patch_size, context", [((64, 48), 1), ((64, 48), 3), ((3, 64, 48), 1)],
                         ids=["2d", "2.5d", "3d"])
def test_cached_pages_give_the_same_patches_and_are_decoded_once(compressed_tif, monkeypatch, patch_size, context):
    cached, cached_reads = _draw(compressed_tif, patch_size=patch_size, context=context, cache=True,
                                 monkeypatch=monkeypatch)
    direct, direct_reads = _draw(compressed_tif, patch_size=patch_size, context=context, cache=False,
                                 monkeypatch=monkeypatch)
    np.testing.assert_array_equal(cached, direct)
    assert cached.dtype == np.float32 and cached.shape == direct.shape
    assert sorted(cached_reads) == sorted(set(cached_reads))  # every page decoded at most once
    assert len(direct_reads) > len(cached_reads)


def test_the_cache_stays_within_its_budget(compressed_tif, monkeypatch):
    page = 192 * 160  # uint8 bytes of one decoded page
    monkeypatch.setattr(_unlabelled, "SLICE_CACHE_BYTES", 2 * page)
    with UnlabelledVolumes([(str(compressed_tif), None)], patch_size=(64, 48)) as data:
        data.sample(30, np.random.default_rng(3))
        assert len(data._slices) == 2 and data._slice_bytes == 2 * page
