"""Object index: every query kind against a brute-force pandas/numpy answer."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
import tifffile
import typer
from typer.testing import CliRunner

from emseg.analysis._index import BOX_NM, ObjectIndex
from emseg.analysis import measure_objects

VOXEL = (40.0, 5.0, 5.0)
CLASSES = {2: "mitochondrion", 4: "vesicle", 5: "psd"}


def random_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """``n`` random objects in a 20 x 400 x 400 voxel volume, with measurement columns."""
    rng = np.random.default_rng(seed)
    lo = np.stack([rng.integers(0, 18, n), rng.integers(0, 380, n), rng.integers(0, 380, n)], axis=1)
    hi = lo + np.stack([rng.integers(1, 3, n), rng.integers(1, 20, n), rng.integers(1, 20, n)], axis=1)
    class_id = rng.choice(list(CLASSES), n)
    count = rng.integers(1, 2000, n)
    table = pd.DataFrame({
        "object_id": rng.permutation(np.arange(10, 10 + n)),
        "class_id": class_id,
        "class_name": [CLASSES[c] for c in class_id],
        "voxel_count": count,
        "volume": count * float(np.prod(VOXEL)),
        "surface_area": count ** (2 / 3) * 6 * 25.0 * rng.uniform(1, 2, n),
        **{f"bbox_{a}0": lo[:, i] for i, a in enumerate("zyx")},
        **{f"bbox_{a}1": hi[:, i] for i, a in enumerate("zyx")},
        **{f"centroid_{a}": (lo[:, i] + hi[:, i] - 1) / 2 for i, a in enumerate("zyx")},
        "equivalent_diameter": (6 * count * float(np.prod(VOXEL)) / np.pi) ** (1 / 3),
        "elongation": rng.uniform(1, 6, n),
        "mean_intensity": rng.uniform(50, 200, n),
        "std_intensity": rng.uniform(5, 30, n),
        "label": ["x"] * n,  # text columns other than class_name are not stored
    })
    return table


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    table = random_table()
    path = tmp_path_factory.mktemp("index") / "objects.sqlite"
    index = ObjectIndex.build(table, path, voxel_size=VOXEL)
    yield table, index
    index.close()


def physical(table: pd.DataFrame) -> pd.DataFrame:
    """Boxes in nm, brute force: voxel i covers [i*s, (i+1)*s)."""
    out = pd.DataFrame({"object_id": table["object_id"], "class_name": table["class_name"]})
    for i, a in enumerate("zyx"):
        out[f"{a}0"] = table[f"bbox_{a}0"] * VOXEL[i]
        out[f"{a}1"] = table[f"bbox_{a}1"] * VOXEL[i]
    return out


def test_schema_meta_and_rtree(built):
    table, index = built
    assert len(index) == 300 and index.voxel_size == VOXEL
    assert set(index.classes) == set(CLASSES.values())
    names = {r[0] for r in index._con.execute("SELECT name FROM sqlite_master")}
    assert {"emseg_meta", "classes", "objects", "objects_rtree", "embeddings"} <= names
    assert "label" not in index.columns and set(BOX_NM) <= set(index.columns)
    sql = "SELECT o.object_id FROM objects_rtree r CROSS JOIN objects o WHERE r.z0_nm <= ? AND o.object_id = r.id"
    assert any("VIRTUAL TABLE INDEX" in line for line in index.explain(sql, [100.0]))
    index.near("vesicle", "psd", 50.0)
    # the R*Tree is searched with all six box constraints (rtree index 2, "B0D1B2D3B4D5")
    assert any("VIRTUAL TABLE INDEX 2:B0D1B2D3B4D5" in line for line in index.explain(*index._last_near_sql))
    assert index.embedding_names == ["log_volume", "log_surface_area", "sphericity", "elongation",
                                     "mean_intensity", "std_intensity"]


def test_label_query_matches_pandas(built):
    table, index = built
    got = index.query(class_name="mitochondrion", ranges={"volume": (5e5, None), "elongation": (None, 3.0)})
    want = table[(table.class_name == "mitochondrion") & (table.volume >= 5e5) & (table.elongation <= 3.0)]
    assert sorted(got["object_id"]) == sorted(want["object_id"]) and len(got) > 0
    assert got["object_id"].is_monotonic_increasing
    assert len(index.query(limit=7)) == 7
    by_id = index.query(class_name="4")  # class id as text
    assert set(by_id["class_name"]) == {"vesicle"}


@pytest.mark.parametrize("mode", ["within", "intersects"])
def test_box_query_matches_pandas(built, mode):
    table, index = built
    p = physical(table)
    box = (120.0, 300.0, 500.0, 520.0, 1200.0, 1500.0)
    z0, y0, x0, z1, y1, x1 = box
    if mode == "within":
        keep = (p.z0 >= z0) & (p.z1 <= z1) & (p.y0 >= y0) & (p.y1 <= y1) & (p.x0 >= x0) & (p.x1 <= x1)
    else:
        keep = (p.z0 < z1) & (p.z1 > z0) & (p.y0 < y1) & (p.y1 > y0) & (p.x0 < x1) & (p.x1 > x0)
    assert keep.equals(in_box(p, box, mode))
    got = index.query(box=box, box_mode=mode)
    assert sorted(got["object_id"]) == sorted(p.loc[keep, "object_id"]) and keep.sum() > 0
    got_class = index.query(box=box, box_mode=mode, class_name="psd")
    assert sorted(got_class["object_id"]) == sorted(p.loc[keep & (p.class_name == "psd"), "object_id"])


def brute_near(table, class_a, class_b, d):
    p = physical(table)
    a, b = p[p.class_name == class_a], p[p.class_name == class_b]
    lo_a, hi_a = a[["z0", "y0", "x0"]].to_numpy()[:, None], a[["z1", "y1", "x1"]].to_numpy()[:, None]
    lo_b, hi_b = b[["z0", "y0", "x0"]].to_numpy()[None], b[["z1", "y1", "x1"]].to_numpy()[None]
    gap = np.sqrt((np.maximum(0, np.maximum(lo_b - hi_a, lo_a - hi_b)) ** 2).sum(-1))
    ia, ib = np.nonzero(gap <= d)
    pairs = {(int(a.object_id.iloc[i]), int(b.object_id.iloc[j])): gap[i, j] for i, j in zip(ia, ib)}
    return {k: v for k, v in pairs.items() if k[0] != k[1]}


@pytest.mark.parametrize(("class_a", "class_b", "d"), [("vesicle", "psd", 60.0), ("psd", "vesicle", 60.0),
                                                       ("mitochondrion", "mitochondrion", 25.0),
                                                       ("vesicle", "psd", 0.0)])
def test_near_matches_brute_force(built, class_a, class_b, d):
    table, index = built
    want = brute_near(table, class_a, class_b, d)
    got = index.near(class_a, class_b, d)
    assert list(got.columns) == ["id_a", "id_b", "distance", "centroid_distance"]
    assert set(zip(got.id_a, got.id_b)) == set(want) and len(want) > 0
    for row in got.itertuples():
        assert row.distance == pytest.approx(want[(row.id_a, row.id_b)])


def in_box(p: pd.DataFrame, box, mode: str) -> pd.Series:
    z0, y0, x0, z1, y1, x1 = box
    if mode == "within":
        return (p.z0 >= z0) & (p.z1 <= z1) & (p.y0 >= y0) & (p.y1 <= y1) & (p.x0 >= x0) & (p.x1 <= x1)
    return (p.z0 < z1) & (p.z1 > z0) & (p.y0 < y1) & (p.y1 > y0) & (p.x0 < x1) & (p.x1 > x0)


@pytest.mark.parametrize("mode", ["within", "intersects"])
@pytest.mark.parametrize(("class_a", "class_b"), [("vesicle", "psd"), ("psd", "vesicle")])
def test_near_in_region(built, class_a, class_b, mode):
    """Both loop orders (rarer class outside) give the brute-force pairs whose A object is in the box."""
    table, index = built
    box = (0.0, 200.0, 300.0, 800.0, 1000.0, 1200.0)
    p = physical(table)
    inside = set(p.loc[in_box(p, box, mode), "object_id"])
    want = {k for k in brute_near(table, class_a, class_b, 80.0) if k[0] in inside}
    got = index.near(class_a, class_b, 80.0, box=box, box_mode=mode)
    assert set(zip(got.id_a, got.id_b)) == want and len(want) > 0


def test_similar_object_and_descriptors(built):
    table, index = built
    oid = int(table.object_id.iloc[17])
    for metric in ("euclidean", "cosine"):
        got = index.similar(oid, k=5, metric=metric)
        assert got["object_id"].iloc[0] == oid and got["distance"].iloc[0] == 0.0
        assert len(got) == 5 and got["distance"].is_monotonic_increasing
    # brute force in numpy on the stored standardised vectors
    ids, vectors, _ = index._embeddings()
    target = vectors[np.searchsorted(ids, oid)]
    order = np.argsort(np.linalg.norm(vectors - target, axis=1), kind="stable")[:5]
    assert list(index.similar(oid, k=5)["object_id"]) == list(ids[order])
    # raw descriptors of the same object find it at distance ~0
    row = table[table.object_id == oid].iloc[0]
    raw = [np.log(row.volume), np.log(row.surface_area),
           np.pi ** (1 / 3) * (6 * row.volume) ** (2 / 3) / row.surface_area,
           row.elongation, row.mean_intensity, row.std_intensity]
    hit = index.similar(descriptors=raw, k=1)
    assert hit["object_id"].iloc[0] == oid and hit["distance"].iloc[0] < 1e-5
    only = index.similar(oid, k=4, class_name="psd")
    assert set(only["class_name"]) == {"psd"}


@pytest.mark.parametrize("mode", ["3d", "2d"])
def test_describe_crop_finds_the_cropped_object(tmp_path, mode):
    rng = np.random.default_rng(1)
    labels = np.zeros((4, 64, 64), np.uint8)
    labels[1:3, 5:15, 5:30] = 2      # elongated
    labels[0:4, 30:50, 30:50] = 2    # compact, big
    labels[2, 55:58, 55:58] = 4      # small
    raw = rng.normal(100, 10, labels.shape) + 50 * (labels == 2)
    names = ["background", "membrane", "mitochondrion", "boundary", "vesicle"]
    table = measure_objects(labels, image=raw, voxel_size=VOXEL, classes=names, mode=mode)
    index = ObjectIndex.build(table, tmp_path / "i.sqlite", voxel_size=VOXEL)
    assert index.meta["mode"] == mode
    crop = (slice(1, 2), slice(25, 56), slice(25, 56)) if mode == "2d" else (slice(0, 4), slice(25, 56),
                                                                          slice(25, 56))
    desc = index.describe_crop(raw[crop], labels[crop] == 2)   # the compact object plus some background
    best = index.similar(descriptors=desc, k=1)
    want = table[(table.bbox_y0 == 30) & (table.bbox_z0 == crop[0].start)].object_id.iloc[0]
    assert best["object_id"].iloc[0] == want and best["distance"].iloc[0] < 1e-4
    with pytest.raises(ValueError, match="raw crop"):
        index.describe_crop(None, labels[crop])
    index.close()


def test_embedding_columns_used_instead(tmp_path):
    table = random_table(50)
    emb = np.random.default_rng(3).normal(size=(50, 4))
    for i in range(4):
        table[f"emb_{i}"] = emb[:, i]
    with ObjectIndex.build(table, tmp_path / "e.sqlite", voxel_size=VOXEL) as index:
        assert index.embedding_names == ["emb_0", "emb_1", "emb_2", "emb_3"]
        got = index.similar(descriptors=emb[7], k=3, metric="cosine")
        assert got["object_id"].iloc[0] == table.object_id.iloc[7]
        with pytest.raises(ValueError, match="embedding columns"):
            index.describe_crop(None, np.ones((3, 3), bool))


def test_atomic_build_overwrite_and_errors(tmp_path):
    table = random_table(20)
    path = tmp_path / "o.sqlite"
    ObjectIndex.build(table, path, voxel_size=VOXEL).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.sqlite"]  # no temporary left
    with pytest.raises(FileExistsError, match="overwrite"):
        ObjectIndex.build(table, path)
    with pytest.raises(ValueError, match="bbox_x1"):
        ObjectIndex.build(table.drop(columns=["bbox_x1"]), tmp_path / "x.sqlite")
    with pytest.raises(ValueError, match="unique"):
        ObjectIndex.build(pd.concat([table, table.iloc[:1]]), tmp_path / "x.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.sqlite"]
    index = ObjectIndex.build(table.iloc[:5], path, voxel_size=VOXEL, overwrite=True)
    assert len(index) == 5
    with pytest.raises(ValueError, match="unknown class 'axon'.*available: .*mitochondrion"):
        index.query(class_name="axon")
    with pytest.raises(ValueError, match="unknown column 'x; DROP TABLE objects'"):
        index.query(ranges={"x; DROP TABLE objects": (1, 2)})
    with pytest.raises(ValueError, match="box"):
        index.query(box=(0, 0, 0, 1, 1))
    index.close()
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="junk.sqlite is not an emseg object index"):
        ObjectIndex.open(tmp_path / "junk.sqlite")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match="not an emseg object index"):
        ObjectIndex.open(other)
    with pytest.raises(FileNotFoundError):
        ObjectIndex.open(tmp_path / "missing.sqlite")


def test_cli_index_and_query(tmp_path):
    from emseg.cli._cmd_index import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    table = random_table()
    csv = tmp_path / "objects.csv"
    table.to_csv(csv, index=False)
    db = tmp_path / "objects.sqlite"
    result = runner.invoke(app, ["index", str(csv), "--db", str(db), "--voxel-size", "40", "5", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", str(csv), "--db", str(db), "--quiet"])
    assert result.exit_code == 2 and "already exists" in result.output

    out = tmp_path / "mito.csv"
    result = runner.invoke(app, ["query", str(db), "--class", "mitochondrion", "--min-volume", "5e5",
                                 "--max-elongation", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    want = table[(table.class_name == "mitochondrion") & (table.volume >= 5e5) & (table.elongation <= 3)]
    assert sorted(pd.read_csv(out)["object_id"]) == sorted(want["object_id"])

    out = tmp_path / "near.parquet"
    result = runner.invoke(app, ["query", str(db), "--class", "vesicle", "--near", "psd", "--distance", "60",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert set(zip(*pd.read_parquet(out)[["id_a", "id_b"]].to_numpy().T)) == set(brute_near(table, "vesicle",
                                                                                             "psd", 60.0))

    raw = np.random.default_rng(0).integers(0, 255, (20, 400, 400), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    oid = int(table.object_id.iloc[3])
    result = runner.invoke(app, ["query", str(db), "--like", str(oid), "--k", "3",
                                 "--crops", str(tmp_path / "crops"), str(tmp_path / "raw.tif"), "--margin", "2"])
    assert result.exit_code == 0, result.output
    crops = sorted((tmp_path / "crops").glob("*.tif"))
    assert len(crops) == 3 and f"object_{oid}.tif" in [c.name for c in crops]
    row = table[table.object_id == oid].iloc[0]
    crop = tifffile.imread(tmp_path / "crops" / f"object_{oid}.tif").reshape(-1)
    z0, y0, x0 = (max(0, int(row[f"bbox_{a}0"]) - 2) for a in "zyx")
    z1, y1, x1 = (min(s, int(row[f"bbox_{a}1"]) + 2) for a, s in zip("zyx", raw.shape))
    assert np.array_equal(crop, raw[z0:z1, y0:y1, x0:x1].reshape(-1))

    mask = np.zeros((40, 40), np.uint8)
    mask[10:25, 12:30] = 1
    tifffile.imwrite(tmp_path / "crop_raw.tif", raw[0, :40, :40])
    tifffile.imwrite(tmp_path / "crop_mask.tif", mask)
    out = tmp_path / "like.csv"
    result = runner.invoke(app, ["query", str(db), "--like-crop", str(tmp_path / "crop_raw.tif"),
                                 str(tmp_path / "crop_mask.tif"), "--k", "4", "--metric", "cosine", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == 4

    result = runner.invoke(app, ["query", str(db), "--box", "0", "0", "0", "800", "1000", "1000"])
    assert result.exit_code == 0, result.output and "object_id" in result.output
    result = runner.invoke(app, ["query", str(db), "--class", "axon"])
    assert result.exit_code == 2 and "available" in result.output
    (tmp_path / "bad.sqlite").write_text("hello")
    result = runner.invoke(app, ["query", str(tmp_path / "bad.sqlite")])
    assert result.exit_code == 2 and "bad.sqlite" in result.output
