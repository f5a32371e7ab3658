"""`productvlm synth`: exact Burberry schema, determinism, every fault kind, images, CLI."""

from __future__ import annotations

import csv
import functools
import http.server
import math
import re
import threading
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from productvlm.answer import parse_price
from productvlm.config import load_saved_config
from productvlm.errors import ProductVLMError
from productvlm.synth import assortment as A
from productvlm.synth.faults import FAULT_KINDS
from productvlm.synth.generate import (
    MAX_SIDE,
    USD_TO_EUR,
    SynthConfig,
    register,
    sample_products,
    synth,
)
from productvlm.synth.render import GRAIN_SIDE
from productvlm.synth.schema import BURBERRY_SCHEMA


def _rows(res) -> list[dict]:
    return pq.read_table(res.parquet).to_pylist()


def _csv(res) -> list[dict]:
    with open(res.csv, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _faults(res) -> list[dict]:
    with open(res.faults, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Default image sizes, no faults."""
    return synth(tmp_path_factory.mktemp("clean") / "cat", n=40, seed=3)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """Small images, a fifth of the rows faulty (two of each kind)."""
    return synth(tmp_path_factory.mktemp("faulty") / "cat", n=70, seed=11, fault_rate=0.2,
                 max_side=200, workers=2)


def test_schema_is_exactly_burberrys(clean):
    schema = pq.read_schema(clean.parquet)
    assert schema.names == BURBERRY_SCHEMA.names
    assert [f.type for f in schema] == [f.type for f in BURBERRY_SCHEMA]
    with open(clean.csv, newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == BURBERRY_SCHEMA.names
    assert len(_rows(clean)) == len(_csv(clean)) == 40


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path):
    url = "http://127.0.0.1:9/img"  # no trailing slash: one is added
    a = synth(tmp_path / "a", n=36, seed=5, fault_rate=0.2, image_base_url=url, max_side=160,
              workers=1)
    b = synth(tmp_path / "b", n=36, seed=5, fault_rate=0.2, image_base_url=url, max_side=160,
              workers=2)
    for name in ("catalog.parquet", "catalog.csv", "faults.csv"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes(), name
    files_a = sorted(p.name for p in a.images.iterdir())
    assert files_a == sorted(p.name for p in b.images.iterdir())
    assert all((a.images / f).read_bytes() == (b.images / f).read_bytes() for f in files_a)
    assert _rows(a)[0]["imageurl"].startswith("http://127.0.0.1:9/img/")

    c = synth(tmp_path / "c", n=36, seed=6, image_base_url=url, max_side=160)
    assert [r["title"] for r in _rows(c)] != [r["title"] for r in _rows(a)]


def test_faults_do_not_change_the_products(tmp_path):
    a = _rows(synth(tmp_path / "a", n=30, seed=2, max_side=96))
    b = _rows(synth(tmp_path / "b", n=30, seed=2, fault_rate=0.3, max_side=96))
    same = [i for i in range(30) if a[i]["title"] == b[i]["title"]]
    assert len(same) >= 30 - 3  # only duplicate_code rows become another product


def test_every_fault_kind_is_present_and_real(faulty):
    faults = _faults(faulty)
    kinds = Counter(f["kind"] for f in faults)
    assert set(kinds) == set(FAULT_KINDS) and min(kinds.values()) >= 2
    assert sum(kinds.values()) == round(0.2 * 70) == sum(faulty.fault_counts.values())
    rows, cells = _rows(faulty), _csv(faulty)
    by_row = {int(f["row"]): f for f in faults}
    for i, f in by_row.items():
        r, kind = rows[i], f["kind"]
        assert int(f["product_code"]) == r["product_code"]
        path = Path(r["imageurl"])
        if kind == "na_url":
            assert r["imageurl"] == "N.A."
        elif kind == "http_404":
            assert path.is_absolute() and not path.exists()
        elif kind == "not_image":
            assert path.read_bytes().startswith(b"<!DOCTYPE html>")
            with pytest.raises(Image.UnidentifiedImageError):
                Image.open(path)
        elif kind == "truncated_jpeg":
            data = path.read_bytes()
            assert data[:2] == b"\xff\xd8" and not data.endswith(b"\xff\xd9")
            with pytest.raises(OSError):
                Image.open(path).load()
        elif kind == "price_missing":
            assert r["full_price"] is None and r["full_price_eur"] is None
            assert cells[i]["full_price"] == ""
        elif kind == "price_string":
            text = cells[i]["full_price"]
            assert re.fullmatch(r"\d{1,3}(,\d{3})*\.\d{2}", text), text
            assert parse_price(text) == r["full_price"]  # Parquet keeps the number
        elif kind == "duplicate_code":
            earlier = [j for j in range(i) if rows[j]["product_code"] == r["product_code"]]
            assert earlier and all(j not in by_row for j in earlier)
            assert rows[earlier[0]]["title"] == r["title"]
            assert rows[earlier[0]]["imageurl"] == r["imageurl"]
    # every row without a fault has a readable image and numeric prices in both files
    for i, r in enumerate(rows):
        if i in by_row:
            continue
        with Image.open(r["imageurl"]) as im:
            im.load()
        assert float(cells[i]["full_price"]) == r["full_price"]
    codes = Counter(r["product_code"] for r in rows)
    assert sum(c - 1 for c in codes.values()) == kinds["duplicate_code"]
    assert faulty.n_images == 70 - kinds["na_url"] - kinds["http_404"] - kinds["duplicate_code"]


def test_no_fault_mode_is_clean(clean):
    assert _faults(clean) == []
    rows = _rows(clean)
    assert len({r["product_code"] for r in rows}) == len(rows)
    for r in rows:
        assert r["full_price"] is not None and Path(r["imageurl"]).is_file()
    assert clean.n_images == len(list(clean.images.iterdir())) == 40
    assert all(re.fullmatch(r"[\d.]+", c["full_price"]) for c in _csv(clean))


def test_images_look_like_product_shots(clean):
    portrait, kb = 0, []
    for r in _rows(clean):
        path = Path(r["imageurl"])
        kb.append(path.stat().st_size / 1024)
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 400 <= max(im.size) <= 960
            portrait += im.height > im.width
            a = np.asarray(im, dtype=np.float32)
        border = np.concatenate([a[:8].reshape(-1, 3), a[:, :8].reshape(-1, 3),
                                 a[:, -8:].reshape(-1, 3)])
        assert border.mean() > 215, "background should be light"
        assert a.std() > 10, "a product should stand out from the background"
    assert portrait >= 0.6 * 40
    assert MAX_SIDE == GRAIN_SIDE  # the largest allowed photo still gets its grain
    assert sum(30 <= k <= 200 for k in kb) >= 0.8 * len(kb), sorted(kb)


def test_catalog_values_look_like_burberrys():
    products = sample_products(SynthConfig(out=Path("unused"), n=3040, seed=0))
    rows, specs = products.rows, products.specs
    assert {r["category1_code"] for r in rows} == {"WOMAN", "MAN", "KIDS"}
    assert {r["category2_code"] for r in rows} == set(A.CATEGORY2_VALUES)
    assert len(A.CATEGORY2_VALUES) == 26
    assert {r["category3_code"] for r in rows} == {it.category3 for it in A.ITEMS}
    lengths = [len(r["title"]) for r in rows]
    assert min(lengths) >= 8 and max(lengths) <= 71
    full = [r["full_price"] for r in rows]
    assert min(full) >= 32 and max(full) <= 70_000 and max(full) > 20_000
    for r in rows:
        assert r["price"] <= r["full_price"]
        assert r["flg_discount"] == int(r["price"] < r["full_price"])
        assert math.isclose(r["full_price_eur"], round(r["full_price"] * USD_TO_EUR, 2))
        assert 34_500_000 <= r["product_code"] <= 80_900_000
        assert (r["website_name"], r["country_code"], r["currency_code"], r["brand"]) == (
            "Burberry", "USA", "USD", "BURBERRY")
        assert r["itemurl"].endswith(f"-p{r['product_code']}")
        assert not re.search(r"\d", r["title"]) or r["category3_code"] == "FRAGRANCES"
    assert len({r["product_code"] for r in rows}) == len(rows)
    assert 0.03 < np.mean([r["flg_discount"] for r in rows]) < 0.15
    assert sum(s.height > s.width for s in specs) > 0.7 * len(specs)


def test_visible_attributes_decide_category_and_price():
    # category3 follows from the silhouette: no shape is drawn for two categories
    owner: dict[str, str] = {}
    for it in A.ITEMS:
        for v in it.variants:
            assert owner.setdefault(it.shape_for(v), it.category3) == it.category3
    # the title (all visible attributes) pins the price down to the noise
    products = sample_products(SynthConfig(out=Path("unused"), n=3000, seed=1))
    rows = products.rows
    for r, a in zip(rows, products.attributes, strict=True):  # every title word is visible
        assert r["title"] == a.item.title(a.variant, a.colour, a.finish)
        assert r["category3_code"] == a.item.category3
    by_title: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_title[r["title"]].append(r["full_price"])
    spreads = [np.std(np.log(p)) for p in by_title.values() if len(p) >= 4]
    assert spreads and np.median(spreads) < 0.1
    assert len({w for r in rows for w in r["title"].split()}) < 120  # learnable vocabulary


def test_price_points():
    assert [A.price_point(x) for x in (30.2, 36.6, 598, 655, 1333, 2251, 12_300, 1e6)] == [
        32.0, 37.0, 590.0, 650.0, 1290.0, 2290.0, 12_500.0, 70_000.0]


def test_images_served_over_http(tmp_path):
    out = tmp_path / "cat"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(out / "images"))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        res = synth(out, n=21, seed=4, fault_rate=0.34, image_base_url=base, max_side=128)
        rows, faults = _rows(res), {int(f["row"]): f["kind"] for f in _faults(res)}
        assert "http_404" in faults.values()
        for i, r in enumerate(rows):
            if faults.get(i) == "na_url":
                continue
            assert r["imageurl"].startswith(base)
            if faults.get(i) == "http_404":
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(r["imageurl"], timeout=5)
                assert e.value.code == 404
            elif faults.get(i) is None:
                with urllib.request.urlopen(r["imageurl"], timeout=5) as resp:
                    assert resp.read()[:2] == b"\xff\xd8"
    finally:
        server.shutdown()
        server.server_close()


def test_bad_options_and_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ProductVLMError, match="fault_rate"):
        synth(tmp_path / "a", n=5, fault_rate=0.9)
    with pytest.raises(ProductVLMError, match="image_base_url"):
        synth(tmp_path / "a", n=5, image_base_url="ftp://host/")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ProductVLMError, match="not empty"):
        synth(busy, n=5)
    assert (busy / "notes.txt").read_text() == "mine"


def test_cli_writes_config_and_refuses_to_overwrite_silently(tmp_path):
    # the synth command on an app of its own, as productvlm.cli registers it (the full CLI
    # also imports every other stage, which this test should not depend on)
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    runner = CliRunner()
    help_ = runner.invoke(app, ["synth", "--help"])
    assert help_.exit_code == 0 and "--fault-rate" in help_.output
    out = tmp_path / "cat"
    args = ["synth", "--out", str(out), "-n", "14", "--seed", "7", "--fault-rate", "0.5",
            "--max-side", "96"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "wrote 14 products" in res.output and "duplicate_code" in res.output
    cfg = load_saved_config(SynthConfig, out)
    assert (cfg.n, cfg.seed, cfg.fault_rate, cfg.max_side) == (14, 7, 0.5, 96)

    again = runner.invoke(app, args)
    assert isinstance(again.exception, ProductVLMError) and "--overwrite" in str(again.exception)
    stale = out / "images" / "stale.jpg"
    stale.write_bytes(b"old")
    res = runner.invoke(app, [*args, "--overwrite", "--seed", "8"])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and load_saved_config(SynthConfig, out).seed == 8

    # a YAML file's synth: section, with flags overriding it
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("synth:\n  n: 9\n  seed: 3\n  max_side: 80\nprepare:\n  seed: 1\n")
    res = runner.invoke(app, ["synth", "--config", str(yaml_file), "--out", str(tmp_path / "y"),
                              "-n", "6"])
    assert res.exit_code == 0, res.output
    cfg = load_saved_config(SynthConfig, tmp_path / "y")
    assert (cfg.n, cfg.seed, cfg.max_side) == (6, 3, 80)


def test_mispricing_writes_known_wrong_prices(tmp_path):
    """--mispricing-rate: decimal slips, swaps across categories, x0.6/x1.5; the photos and
    every other field are those of a clean run, and faults.csv records each with its kind."""
    base = _rows(synth(tmp_path / "base", n=60, seed=5, max_side=96, workers=1))
    res = synth(tmp_path / "mis", n=60, seed=5, max_side=96, workers=1, fault_rate=0.1,
                mispricing_rate=0.2)
    rows, faults = _rows(res), _faults(res)
    wrong = {int(f["row"]): f for f in faults if f["kind"].startswith("price_")
             and f["kind"] not in ("price_missing", "price_string")}
    assert {f["kind"] for f in wrong.values()} == {"price_decimal_slip", "price_swap",
                                                   "price_moderate"}
    assert 12 <= len(wrong) <= 13  # 20% of 60, a swap may add its partner
    other_faults = {int(f["row"]) for f in faults} - set(wrong)
    assert not other_faults & set(wrong)
    for i, (r, b) in enumerate(zip(rows, base, strict=True)):
        if i in other_faults:
            continue
        assert Path(r["imageurl"]).name == Path(b["imageurl"]).name and r["title"] == b["title"]
        kind = wrong.get(i, {}).get("kind")
        ratio = r["full_price"] / b["full_price"]
        if kind is None:
            assert ratio == 1
        elif kind == "price_decimal_slip":
            assert ratio == pytest.approx(10) or ratio == pytest.approx(0.1)
        elif kind == "price_moderate":
            assert ratio == pytest.approx(1.5, rel=1e-3) or ratio == pytest.approx(0.6, rel=1e-3)
        else:  # swapped with a product of another category, priced 1.5x apart at least
            j = int(wrong[i]["detail"].split("row ")[1].split(" ")[0])
            assert wrong[j]["kind"] == "price_swap"
            assert r["full_price"] == base[j]["full_price"]
            assert r["category3_code"] != rows[j]["category3_code"]
            assert max(ratio, 1 / ratio) >= 1.5
