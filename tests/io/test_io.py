"""Tests for emseg.io: round trips, lazy reading, errors and atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import zarr

from emseg.io import (
    ImageData,
    ImageFormatError,
    atomic_output,
    open_image,
    read_image,
    supported_formats,
    write_image,
)

ISBI_RAW = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi2012-membranes" / "train_raw.tif"
if not ISBI_RAW.exists():  # checkout not beside shared/
    ISBI_RAW = Path("/work/shared/data/isbi2012-membranes/train_raw.tif")

RNG = np.random.default_rng(0)


def _volume(dtype: str, ndim: int) -> np.ndarray:
    shape = (4, 12, 10)[-ndim:]
    if np.dtype(dtype).kind == "f":
        return RNG.normal(size=shape).astype(dtype)
    return RNG.integers(0, 200, size=shape).astype(dtype)


def _leftovers(folder: Path) -> list[str]:
    """Temporary names left anywhere below ``folder``."""
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------- round trips

WRITABLE = [
    ("vol.tif", {}),
    ("vol.tiff", {}),
    ("vol.zarr", {"zarr_format": 2}),
    ("vol.zarr", {"zarr_format": 3}),
    ("store.zarr/raw/s0", {"zarr_format": 2}),
    ("store.zarr/raw/s0", {"zarr_format": 3}),
    ("vol.h5", {}),
    ("vol.hdf5:volumes/raw", {}),
]


@pytest.mark.parametrize("name,kwargs", WRITABLE, ids=[f"{n}-{k}" for n, k in WRITABLE])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_round_trip(tmp_path, name, kwargs, dtype, ndim):
    data = _volume(dtype, ndim)
    path = tmp_path / name
    write_image(str(path), data, voxel_size=(50.0, 4.0, 4.0), **kwargs)
    with open_image(str(path)) as image:
        assert isinstance(image, ImageData)
        assert image.array.ndim == 3
        assert image.array.shape == (1,) * (3 - ndim) + data.shape
        assert image.array.dtype == data.dtype
        assert image.is_2d == (ndim == 2)
        assert image.voxel_size == pytest.approx((50.0, 4.0, 4.0))
        assert image.path == str(path)
        np.testing.assert_array_equal(image.array[0], data if ndim == 2 else data[0])
    out = read_image(path)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, data.reshape(out.shape))
    assert _leftovers(tmp_path) == []


def test_zarr_format_on_disk(tmp_path):
    data = _volume("uint8", 3)
    write_image(tmp_path / "v2.zarr", data, zarr_format=2)
    write_image(tmp_path / "v3.zarr", data, zarr_format=3)
    assert (tmp_path / "v2.zarr" / ".zarray").is_file()
    assert (tmp_path / "v3.zarr" / "zarr.json").is_file()
    assert zarr.open_array(str(tmp_path / "v2.zarr"), mode="r").metadata.zarr_format == 2


def test_zarr_add_array_to_existing_store_keeps_its_format(tmp_path):
    store = tmp_path / "s.zarr"
    write_image(f"{store}/raw", _volume("uint8", 3), zarr_format=2)
    labels = _volume("uint8", 3) % 3
    write_image(f"{store}/labels/fg", labels)  # default zarr_format=3, store is v2
    assert (store / "labels" / "fg" / ".zarray").is_file()
    np.testing.assert_array_equal(read_image(f"{store}/labels/fg"), labels)
    np.testing.assert_array_equal(zarr.open_group(str(store), mode="r")["labels/fg"][:], labels)


def test_hdf5_add_dataset_to_existing_file(tmp_path):
    raw, labels = _volume("uint8", 3), _volume("uint8", 3) % 2
    write_image(f"{tmp_path}/d.h5:raw", raw)
    write_image(f"{tmp_path}/d.h5:labels/mito", labels, chunks=(2, 6, 5))
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert sorted(f) == ["labels", "raw"]
        assert f["labels/mito"].chunks == (2, 6, 5)
    np.testing.assert_array_equal(read_image(f"{tmp_path}/d.h5:/labels/mito"), labels)


def test_chunks_are_used(tmp_path):
    data = _volume("uint8", 3)
    write_image(tmp_path / "c.zarr", data, chunks=(1, 6, 5))
    assert zarr.open_array(str(tmp_path / "c.zarr"), mode="r").chunks == (1, 6, 5)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_round_trip(tmp_path, dtype):
    data = _volume(dtype, 2)
    write_image(tmp_path / "img.png", data)
    with open_image(tmp_path / "img.png") as image:
        assert image.format == "png" and image.is_2d and image.array.shape == (1,) + data.shape
        np.testing.assert_array_equal(image.array[0], data)


@pytest.mark.parametrize("bad", [np.zeros((2, 4, 4), np.uint8), np.zeros((4, 4), np.float32)])
def test_png_rejects_volumes_and_floats(tmp_path, bad):
    with pytest.raises(ValueError, match="PNG"):
        write_image(tmp_path / "img.png", bad)
    assert not (tmp_path / "img.png").exists()


def test_tiff_is_readable_as_imagej(tmp_path):
    write_image(tmp_path / "v.tif", _volume("uint16", 3), voxel_size=(50.0, 4.0, 4.0))
    with tifffile.TiffFile(tmp_path / "v.tif") as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["spacing"] == 50.0 and tif.imagej_metadata["unit"] == "nm"
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_tiff_other_dtypes_keep_dtype_and_voxel_size(tmp_path):
    data = _volume("uint32", 3)
    write_image(tmp_path / "labels.tif", data, voxel_size=(30.0, 5.0, 5.0))
    with open_image(tmp_path / "labels.tif") as image:
        assert image.array.dtype == np.uint32
        assert image.voxel_size == (30.0, 5.0, 5.0)
        np.testing.assert_array_equal(image.array[...], data)


def test_write_from_lazy_array(tmp_path):
    data = _volume("uint8", 3)
    write_image(tmp_path / "src.tif", data)
    with open_image(tmp_path / "src.tif") as image:
        write_image(f"{tmp_path}/dst.h5:raw", image.array, chunks=(1, 12, 10))
        write_image(tmp_path / "dst.zarr", image.array, chunks=(3, 12, 10))
    np.testing.assert_array_equal(read_image(f"{tmp_path}/dst.h5:raw"), data)
    np.testing.assert_array_equal(read_image(tmp_path / "dst.zarr"), data)


# --------------------------------------------------------------------------- real data, lazy reading


def test_real_isbi_crop_is_page_accessed():
    with open_image(ISBI_RAW) as image:
        assert image.format == "tiff"
        assert image.array.shape == (30, 512, 512) and image.array.dtype == np.uint8
        assert not image.is_2d
        assert not isinstance(image.array, np.ndarray)  # zlib-compressed: page access, not loaded
        crop = image.array[10:12, 100:164, 200:264]
        single = image.array[-1]
    expected = tifffile.imread(ISBI_RAW, key=[10, 11])[:, 100:164, 200:264]
    assert crop.shape == (2, 64, 64)
    np.testing.assert_array_equal(crop, expected)
    np.testing.assert_array_equal(single, tifffile.imread(ISBI_RAW, key=29))


def test_real_isbi_crop_round_trip(tmp_path):
    with open_image(ISBI_RAW) as image:
        crop = image.array[0:3, 0:64, 0:64]
    write_image(tmp_path / "crop.tif", crop, voxel_size=(50.0, 4.0, 4.0))
    write_image(f"{tmp_path}/crop.zarr/raw", crop)
    for path in (tmp_path / "crop.tif", f"{tmp_path}/crop.zarr/raw"):
        np.testing.assert_array_equal(read_image(path), crop)


def test_uncompressed_tiff_is_memmapped(tmp_path):
    data = _volume("uint16", 3)
    tifffile.imwrite(tmp_path / "raw.tif", data, photometric="minisblack")
    with open_image(tmp_path / "raw.tif") as image:
        assert isinstance(image.array, np.memmap)
        np.testing.assert_array_equal(image.array[1:3, 2:4, 5:], data[1:3, 2:4, 5:])
    out = read_image(tmp_path / "raw.tif")
    assert type(out) is np.ndarray and out.flags.owndata


def test_slice_stack_indexing_matches_numpy(tmp_path):
    data = _volume("uint8", 3)
    write_image(tmp_path / "v.tif", data)
    with open_image(tmp_path / "v.tif") as image:
        arr = image.array
        for key in [(slice(None),), (1,), (-1, 3), (slice(1, None, 2), slice(2, 5), 4),
                    (Ellipsis, 0), ([3, 0],), (slice(0, 0),)]:
            np.testing.assert_array_equal(arr[key], data[key])
        np.testing.assert_array_equal(np.asarray(arr), data)
        with pytest.raises(IndexError):
            arr[4]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_reads_lazily(tmp_path, zarr_format):
    data = _volume("uint8", 3)
    write_image(f"{tmp_path}/s.zarr/raw", data, chunks=(1, 4, 5), zarr_format=zarr_format)
    with open_image(f"{tmp_path}/s.zarr/raw") as image:
        assert not isinstance(image.array, np.ndarray)
        # Corrupt the chunk at z=3: a patch elsewhere must not read it.
        chunk = tmp_path / "s.zarr" / "raw" / ("3.0.0" if zarr_format == 2 else "c/3/0/0")
        chunk.write_bytes(b"garbage")
        patch = image.array[0:2, 0:4, 0:5]
        assert type(patch) is np.ndarray and patch.shape == (2, 4, 5)
        np.testing.assert_array_equal(patch, data[0:2, 0:4, 0:5])
        with pytest.raises(Exception):
            image.array[3]


def test_hdf5_reads_lazily_and_closes(tmp_path):
    data = _volume("float32", 3)
    write_image(f"{tmp_path}/d.h5:raw", data)
    image = open_image(f"{tmp_path}/d.h5:raw")
    assert isinstance(image.array, h5py.Dataset)
    patch = image.array[1:3, 0:4, 0:5]
    assert type(patch) is np.ndarray and patch.shape == (2, 4, 5)
    np.testing.assert_array_equal(patch, data[1:3, 0:4, 0:5])
    image.close()
    assert not image.array.id.valid


def test_hdf5_2d_dataset_gets_z_axis(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["img"] = np.arange(20, dtype=np.uint16).reshape(4, 5)
    with open_image(f"{tmp_path}/d.h5:img") as image:
        assert image.is_2d and image.array.shape == (1, 4, 5)
        np.testing.assert_array_equal(image.array[0, 1:3], np.arange(20).reshape(4, 5)[1:3])


def test_ome_zarr_uses_highest_resolution(tmp_path):
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    root.create_array("0", shape=(1, 3, 4, 5), dtype="uint8")[:] = 7
    root.create_array("1", shape=(1, 3, 2, 2), dtype="uint8")
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}] + [
            {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.05, 0.004, 0.004]}]},
                     {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.05, 0.008, 0.008]}]}],
    }]
    with open_image(tmp_path / "img.ome.zarr") as image:
        assert image.array.shape == (3, 4, 5)
        assert image.voxel_size == pytest.approx((50.0, 4.0, 4.0))
        assert int(image.array[2, 3, 4]) == 7


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_slice_folder_natural_sort_and_lazy(tmp_path, suffix):
    folder = tmp_path / "slices"
    folder.mkdir()
    names = ["slice1", "slice2", "slice10"]  # lexicographic order would be 1, 10, 2
    for z, name in enumerate(names):
        image = np.full((6, 7), z + 1, dtype=np.uint8)
        write_image(folder / f"{name}.{suffix}", image)
    (folder / ".hidden.png").write_bytes(b"ignored")
    assert sorted(names) != names
    with open_image(folder) as image:
        assert image.format == f"{'png' if suffix == 'png' else 'tiff'}-folder"
        assert image.array.shape == (3, 6, 7) and image.array.dtype == np.uint8
        assert [int(image.array[z, 0, 0]) for z in range(3)] == [1, 2, 3]
        # Only the slices indexed are read: break slice10 and read the others.
        (folder / f"slice10.{suffix}").write_bytes(b"not an image")
        np.testing.assert_array_equal(image.array[0:2, 1:3, 1:3], np.stack([np.full((2, 2), 1), np.full((2, 2), 2)]))
        with pytest.raises(ImageFormatError, match="slice10"):
            image.array[2]


def test_mrc_with_voxel_size(tmp_path):
    data = _volume("float32", 3)
    with mrcfile.new(tmp_path / "tomo.mrc") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (40.0, 40.0, 500.0)  # x, y, z in Å
    with open_image(tmp_path / "tomo.mrc") as image:
        assert image.format == "mrc" and not image.is_2d
        assert isinstance(image.array, np.memmap)
        assert image.voxel_size == pytest.approx((50.0, 4.0, 4.0))  # (z, y, x) nm
        np.testing.assert_array_equal(image.array[1:3, 2:4], data[1:3, 2:4])
    np.testing.assert_array_equal(read_image(tmp_path / "tomo.mrc"), data)  # valid after close


def test_mrc_2d_without_voxel_size(tmp_path):
    data = _volume("uint8", 2).astype(np.int8)
    with mrcfile.new(tmp_path / "img.map") as mrc:
        mrc.set_data(data)
    with open_image(tmp_path / "img.map") as image:
        assert image.is_2d and image.array.shape == (1,) + data.shape
        assert image.voxel_size is None


# --------------------------------------------------------------------------- errors


def test_supported_formats_lines():
    lines = supported_formats()
    text = "\n".join(lines)
    for needle in (".tif", ".png", "folder", "file.h5:path/in/file", "store.zarr/path/in/store", ".mrc"):
        assert needle in text
    assert all(isinstance(line, str) for line in lines)


@pytest.mark.parametrize("name", ["missing.tif", "missing.h5:raw", "missing.zarr/raw", "missing.mrc", "missing.xyz"])
def test_missing_file(tmp_path, name):
    path = f"{tmp_path}/{name}"
    with pytest.raises(FileNotFoundError) as info:
        open_image(path)
    message = str(info.value)
    assert str(tmp_path / name.split(":")[0].split("/")[0]) in message
    assert "HDF5" in message and "TIFF" in message  # lists the formats understood


def test_unknown_suffix(tmp_path):
    path = tmp_path / "notes.xyz"
    path.write_text("hello")
    with pytest.raises(ImageFormatError) as info:
        open_image(path)
    assert str(path) in str(info.value) and "zarr" in str(info.value) and "MRC" in str(info.value)
    with pytest.raises(ImageFormatError, match="xyz"):
        write_image(tmp_path / "out.xyz", np.zeros((2, 2), np.uint8))
    with pytest.raises(ImageFormatError, match="read-only"):
        write_image(tmp_path / "out.mrc", np.zeros((2, 2), np.uint8))


def test_missing_hdf5_dataset_lists_existing(tmp_path):
    write_image(f"{tmp_path}/d.h5:volumes/raw", _volume("uint8", 3))
    write_image(f"{tmp_path}/d.h5:volumes/labels", _volume("uint8", 3))
    path = f"{tmp_path}/d.h5:volumes/prediction"
    with pytest.raises(ImageFormatError) as info:
        open_image(path)
    message = str(info.value)
    assert path in message and "volumes/raw" in message and "volumes/labels" in message
    with pytest.raises(ImageFormatError, match="volumes/raw"):
        open_image(tmp_path / "d.h5")  # two datasets, none named


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_missing_zarr_array_lists_existing(tmp_path, zarr_format):
    write_image(f"{tmp_path}/s.zarr/raw", _volume("uint8", 3), zarr_format=zarr_format)
    write_image(f"{tmp_path}/s.zarr/labels/mito", _volume("uint8", 3))
    path = f"{tmp_path}/s.zarr/labels/er"
    with pytest.raises(ImageFormatError) as info:
        open_image(path)
    message = str(info.value)
    assert path in message and "'raw'" in message and "labels/mito" in message
    with pytest.raises(ImageFormatError, match="labels/mito"):
        open_image(tmp_path / "s.zarr")


def test_colour_png_rejected(tmp_path):
    import imagecodecs

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    (tmp_path / "rgb.png").write_bytes(imagecodecs.png_encode(rgb))
    with pytest.raises(ImageFormatError, match="colour"):
        open_image(tmp_path / "rgb.png")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"array": np.zeros((1, 2, 3, 4), np.uint8)}, "2-D"),
        ({"voxel_size": (1.0, 2.0)}, "voxel_size"),
        ({"voxel_size": (1.0, -2.0, 3.0)}, "voxel_size"),
        ({"chunks": (2, 2)}, "chunks"),
        ({"zarr_format": 4}, "zarr_format"),
    ],
)
def test_write_validates_arguments(tmp_path, kwargs, match):
    kwargs = {"array": np.zeros((2, 3, 4), np.uint8), **kwargs}
    with pytest.raises(ValueError, match=match):
        write_image(tmp_path / "out.zarr", **kwargs)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- atomic writes, overwrite


class _FailingArray:
    """Lazy array that raises after the first slab, to interrupt a chunked write."""

    def __init__(self, data: np.ndarray):
        self.data, self.shape, self.dtype, self.calls = data, data.shape, data.dtype, 0

    def __getitem__(self, key):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("disk full")
        return self.data[key]


@pytest.mark.parametrize("name", ["out.zarr", "store.zarr/raw", "out.h5:raw"])
def test_interrupted_chunked_write_leaves_nothing(tmp_path, name):
    path = f"{tmp_path}/{name}"
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(path, _FailingArray(_volume("uint8", 3)), chunks=(1, 12, 10))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_into_existing_containers(tmp_path):
    write_image(f"{tmp_path}/s.zarr/raw", _volume("uint8", 3))
    write_image(f"{tmp_path}/d.h5:raw", _volume("uint8", 3))
    for path in (f"{tmp_path}/s.zarr/pred", f"{tmp_path}/d.h5:pred"):
        with pytest.raises(RuntimeError):
            write_image(path, _FailingArray(_volume("uint8", 3)), chunks=(1, 12, 10))
        with pytest.raises(ImageFormatError, match="raw"):
            open_image(path)
    assert _leftovers(tmp_path) == []
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert list(f) == ["raw"]


def test_interrupted_tiff_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_imwrite(path, data, **kwargs):
        Path(path).write_bytes(b"II*\x00partial")
        raise OSError("interrupted")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(OSError, match="interrupted"):
        write_image(tmp_path / "vol.tif", _volume("uint8", 3))
    assert list(tmp_path.iterdir()) == []  # the backend imports tifffile lazily, so the patch applies


def test_overwrite_protection(tmp_path):
    first, second = _volume("uint8", 3), _volume("uint8", 3)
    for path in (tmp_path / "v.tif", tmp_path / "v.zarr", f"{tmp_path}/s.zarr/raw", f"{tmp_path}/d.h5:raw"):
        write_image(path, first)
        with pytest.raises(FileExistsError) as info:
            write_image(path, second)
        assert str(path) in str(info.value) and "overwrite=True" in str(info.value)
        np.testing.assert_array_equal(read_image(path), first)
        write_image(path, second, overwrite=True)
        np.testing.assert_array_equal(read_image(path), second)
    assert _leftovers(tmp_path) == []


def test_atomic_output_file_and_directory(tmp_path):
    final = tmp_path / "sub" / "out.txt"
    with atomic_output(final) as tmp:
        assert tmp.parent == final.parent and ".tmp-" in tmp.name and tmp.suffix == ".txt"
        tmp.write_text("new")
        assert not final.exists()
    assert final.read_text() == "new"

    with pytest.raises(KeyError):
        with atomic_output(final) as tmp:
            tmp.write_text("half")
            raise KeyError("boom")
    assert final.read_text() == "new"

    folder = tmp_path / "res.zarr"
    folder.mkdir()
    (folder / "old").write_text("old")
    with atomic_output(folder) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
        assert (folder / "old").exists()  # replaced only after success
    assert sorted(os.listdir(folder)) == ["new"]
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_output(folder, overwrite=False):
            pass
    assert _leftovers(tmp_path) == []


def test_import_is_cheap():
    code = "import sys, emseg.io; print(sorted(m for m in ('h5py', 'zarr', 'mrcfile', 'tifffile') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_remove_stale_temporaries_keeps_those_of_running_writers(tmp_path):
    """Hidden temporaries of dead writers go; this process's, running processes' and other files stay."""
    import subprocess
    import sys

    from emseg.io import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid no longer runs
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        names = [f".labels.tmp-{dead.pid}-ab12cd34.tif", f".probs.tmp-{dead.pid}-ab12cd34.zarr",
                 f".model.old-{dead.pid}-00ff00ff.pt", f".labels.tmp-{alive.pid}-ab12cd34.tif",
                 f".labels.tmp-{os.getpid()}-ab12cd34.tif", "labels.tif", ".hidden.tif", ".x.tmp-notapid.tif"]
        for name in names:
            (tmp_path / name).mkdir() if name.endswith(".zarr") else (tmp_path / name).write_bytes(b"x")
        only_labels = remove_stale_temporaries(tmp_path, names=["labels.tif"])
        assert [p.name for p in only_labels] == [names[0]]
        removed = {p.name for p in remove_stale_temporaries(tmp_path)}
        assert removed == {names[1], names[2]}
        assert {p.name for p in tmp_path.iterdir()} == set(names[3:])
    finally:
        alive.kill()
        alive.wait()
