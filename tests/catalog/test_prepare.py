"""`productvlm prepare` end to end on small catalogs: nothing lost, faults reported, splits
leak-free and deterministic, every source format, the CLI's errors, resume from the cache."""

from __future__ import annotations

import csv
import functools
import json
import random
import subprocess
import sys
import threading
from collections import defaultdict
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import pandas as pd
import pytest
from PIL import Image

from productvlm.catalog.prepare import PrepareConfig, prepare
from productvlm.catalog.schema import reason_key
from productvlm.config import load_saved_config
from productvlm.errors import ProductVLMError

EXE = Path(sys.executable).with_name("productvlm")
N = 40
CATS = ["BAGS", "SHOES", "SCARVES"]

# row -> the reason its failure must carry (prefix); every other row must be prepared
EXPECTED_FAILURES = {
    1: "price: missing",
    2: "price: invalid ('abc')",
    3: "title: empty",
    4: "category: empty",
    5: "image: not a URL or path",
    6: "image: file not found",
    7: "image: not an image",  # an HTML page saved as .jpg
    8: "image: ",  # a truncated JPEG (fetch words the reason)
    9: "image: missing",
    40: "duplicate of row 10",
}


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _rows() -> list[dict]:
    rng = random.Random(0)
    rows = [
        {"product_code": i, "title": f"Check Bag {i}", "category": CATS[i % 3],
         "price": f"{1000 + 10 * i:,.2f}", "image": f"images/{i}.jpg"}
        for i in range(N)
    ]
    rows[1]["price"] = ""
    rows[2]["price"] = "abc"
    rows[3]["title"] = ""
    rows[4]["category"] = " "
    rows[5]["image"] = "N.A."
    rows[6]["image"] = "images/missing.jpg"
    rows[7]["image"] = "images/page.jpg"
    rows[8]["image"] = "images/truncated.jpg"
    rows[9]["image"] = ""
    rows.append(dict(rows[10]))  # row 40: an exact duplicate, dropped
    rows.append(dict(rows[11], price="999.00"))  # row 41: same code, other price: kept, together
    rows[12]["image"] = "images/13.jpg"  # codes 12 and 13 share one photo: kept, together
    rng.shuffle(rows[14:20])  # order does not matter
    return rows


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """catalog.csv + images/ with every fault kind, in a folder of its own."""
    root = tmp_path_factory.mktemp("catalog")
    (root / "images").mkdir()
    for i in range(N):
        Image.new("RGB", (48 + i, 64), (i * 6, 200 - i, 90)).save(root / "images" / f"{i}.jpg")
    (root / "images" / "page.jpg").write_text("<!doctype html><html>Not found</html>")
    whole = (root / "images" / "8.jpg").read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    pd.DataFrame(_rows()).to_csv(root / "catalog.csv", index=False)
    return root


def _run(source, out: Path, **kw):
    kw.setdefault("preset", "simple")
    return prepare(str(source), out, progress=False, verbose=False, **kw)


def _splits(out: Path) -> dict[str, list[dict]]:
    dd = datasets.load_from_disk(str(out / "dataset"))
    return {s: dd[s].remove_columns("image").to_list() for s in dd}


def test_counts_add_up_and_every_fault_is_reported(catalog, tmp_path):
    r = _run(catalog / "catalog.csv", tmp_path / "out")
    assert r.rows_in == N + 2 and r.rows_in == r.prepared + r.failed
    with (tmp_path / "out" / "failures.csv").open() as f:
        failures = list(csv.DictReader(f))
    assert list(failures[0]) == ["row", "product_code", "reason"]
    got = {int(f["row"]): f["reason"] for f in failures}
    assert set(got) == set(EXPECTED_FAILURES)
    for row, reason in EXPECTED_FAILURES.items():
        assert got[row].startswith(reason), (row, got[row])
    assert {f["product_code"] for f in failures if f["row"] == "40"} == {"10"}

    kept = [row["source_row"] for rows in _splits(tmp_path / "out").values() for row in rows]
    assert len(kept) == len(set(kept)) == r.prepared
    assert set(kept) | set(got) == set(range(r.rows_in)) and not set(kept) & set(got)

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["rows_in"], counts["prepared"], counts["failed"]) == (N + 2, r.prepared, 10)
    assert sum(counts["failed_by_reason"].values()) == 10
    assert counts["failed_by_reason"]["duplicate"] == 1
    assert manifest["splits"] == r.split_sizes and sum(r.split_sizes.values()) == r.prepared
    assert set(manifest["versions"]) >= {"python", "datasets", "pyarrow"}
    assert manifest["row_numbering"].startswith("0-based")  # failures.csv's `row`
    assert manifest["column_map"]["price"] == "price"
    cfg = load_saved_config(PrepareConfig, tmp_path / "out")
    assert cfg.preset == "simple" and cfg.fetch.local_root == catalog.resolve()


def test_dataset_columns_types_and_images(catalog, tmp_path):
    _run(catalog / "catalog.csv", tmp_path / "out", currency="USD")
    dd = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    assert list(dd) == ["train", "validation", "test"]
    f = dd["train"].features
    assert isinstance(f["image"], datasets.Image)
    assert {k: f[k].dtype for k in f if k != "image"} == {
        "product_code": "string", "title": "string", "category": "string",
        "category1": "string", "category2": "string", "price": "float64",
        "currency": "string", "image_sha256": "string", "source_row": "int64"}
    row = next(r for s in dd for r in dd[s] if r["source_row"] == 20)
    assert (row["product_code"], row["title"], row["price"]) == ("20", "Check Bag 20", 1200.0)
    assert (row["category1"], row["category2"], row["currency"]) == ("", "", "USD")
    assert row["image"].mode == "RGB" and row["image"].size == (68, 64)


def test_codes_and_duplicate_images_never_cross_splits(catalog, tmp_path):
    _run(catalog / "catalog.csv", tmp_path / "out")
    where: dict[tuple[str, str], set[str]] = defaultdict(set)
    for split, rows in _splits(tmp_path / "out").items():
        for row in rows:
            where["code", row["product_code"]].add(split)
            where["sha", row["image_sha256"]].add(split)
    assert all(len(s) == 1 for s in where.values())
    assert where["code", "12"] == where["code", "13"]  # shared photo
    assert len([k for k in where if k == ("code", "11")]) == 1


def test_deterministic_and_seeded(catalog, tmp_path):
    def membership(out):
        return {s: sorted(r["source_row"] for r in rows) for s, rows in _splits(out).items()}

    _run(catalog / "catalog.csv", tmp_path / "a", seed=1)
    _run(catalog / "catalog.csv", tmp_path / "b", seed=1)
    _run(catalog / "catalog.csv", tmp_path / "c", seed=2)
    assert membership(tmp_path / "a") == membership(tmp_path / "b")
    assert membership(tmp_path / "a") != membership(tmp_path / "c")
    for s in ("train", "test"):
        a = json.loads((tmp_path / "a" / "dataset" / s / "state.json").read_text())
        b = json.loads((tmp_path / "b" / "dataset" / s / "state.json").read_text())
        assert a["_fingerprint"] == b["_fingerprint"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf-folder", "hf-saved"])
def test_every_source_format_gives_the_same_result(fmt, catalog, tmp_path):
    df = pd.read_csv(catalog / "catalog.csv", dtype=str, keep_default_na=False)
    src = tmp_path / "src"  # images stay in the catalog folder: local_root points there
    src.mkdir()
    if fmt == "jsonl":
        df.to_json(src / "c.jsonl", orient="records", lines=True)
        path = src / "c.jsonl"
    elif fmt == "parquet":
        df.to_parquet(src / "c.parquet")
        path = src / "c.parquet"
    elif fmt == "hf-folder":  # load_dataset("parquet", data_files=...) under the hood
        df.to_parquet(src / "train.parquet")
        path = src
    else:
        datasets.Dataset.from_pandas(df).save_to_disk(src / "saved")
        path = src / "saved"
    ref = _run(catalog / "catalog.csv", tmp_path / "ref")
    got = _run(path, tmp_path / "got", local_root=catalog)
    assert (got.rows_in, got.prepared, got.split_sizes) == (
        ref.rows_in, ref.prepared, ref.split_sizes)
    assert (tmp_path / "got" / "failures.csv").read_text() == (
        tmp_path / "ref" / "failures.csv").read_text()


def test_burberry_preset_fills_category_levels(catalog, tmp_path):
    df = pd.DataFrame({
        "product_code": [1, 2], "title": ["Medium Lola Bag", "Check Scarf"],
        "category1_code": ["WOMAN", "MAN"], "category2_code": ["BAGS", "ACCESSORIES"],
        "category3_code": ["SHOULDER BAGS", "SCARVES"], "currency_code": ["USD", "USD"],
        "full_price": [2290.0, None], "imageurl": ["images/0.jpg", "images/1.jpg"],
    })
    df.to_parquet(catalog / "burberry.parquet")
    r = prepare(str(catalog / "burberry.parquet"), tmp_path / "out", progress=False,
                verbose=False)
    assert (r.prepared, r.failed_by_reason) == (1, {"price: missing": 1})
    (row,) = _splits(tmp_path / "out")["train"]
    assert (row["category"], row["category1"], row["category2"], row["currency"],
            row["price"]) == ("SHOULDER BAGS", "WOMAN", "BAGS", "USD", 2290.0)


def test_missing_column_names_it_and_lists_present(catalog, tmp_path):
    with pytest.raises(ProductVLMError) as e:
        _run(catalog / "catalog.csv", tmp_path / "out", preset="burberry")
    assert "column 'category3_code' (for category) is missing" in str(e.value)
    assert "columns present: product_code, title, category, price, image" in str(e.value)
    r = _run(catalog / "catalog.csv", tmp_path / "out", preset="burberry",
             map={"category": "category", "price": "price", "image": "image"})
    assert r.prepared > 0


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), "prepare", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_cli_bad_input_is_one_line_exit_2(catalog, tmp_path):
    # the default preset's columns are absent: the installed command, in its own process
    p = _cli(str(catalog / "catalog.csv"), "--out", str(tmp_path / "o"))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "columns present: product_code, title" in p.stderr


@pytest.mark.parametrize("args, message", [
    (["nope.csv"], "nope.csv: no such file"),
    (["CAT", "--val-fraction", "0.95"], "val_fraction + test_fraction"),
    (["CAT", "--preset", "amazon"], "unknown preset 'amazon'"),
    (["CAT", "--map", "titel=name"], "unknown field 'titel'"),
    (["CAT", "other.csv"], "expected one catalog source, got 2"),
    (["HEADER_ONLY", "--preset", "simple"], "header_only.csv: the catalog has no rows"),
])
def test_cli_errors_in_process(args, message, catalog, tmp_path, monkeypatch, capsys):
    from productvlm import cli

    (tmp_path / "header_only.csv").write_text("product_code,title,category,price,image\n")
    files = {"CAT": str(catalog / "catalog.csv"), "HEADER_ONLY": str(tmp_path / "header_only.csv")}
    args = [files.get(a, a) for a in args]
    monkeypatch.setattr(sys, "argv", ["productvlm", "prepare", *args, "--out",
                                      str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_map_pairs_and_config_file(catalog, tmp_path):
    df = pd.read_csv(catalog / "catalog.csv", dtype=str, keep_default_na=False)
    df.rename(columns={"title": "name", "price": "list_price"}).to_csv(
        catalog / "renamed.csv", index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prepare:\n  seed: 5\n  preset: simple\n  map: {image: image}\n")
    p = _cli(str(catalog / "renamed.csv"), "--out", str(tmp_path / "o"), "--config", str(cfg),
             "--test-fraction", "0.2", "--no-progress", "--map", "title=name",
             "price=list_price")
    assert p.returncode == 0, p.stderr
    assert f"rows in {N + 2} = prepared 32 + failed 10" in p.stdout
    saved = load_saved_config(PrepareConfig, tmp_path / "o")
    assert (saved.seed, saved.test_fraction, saved.preset) == (5, 0.2, "simple")
    assert saved.map == {"image": "image", "title": "name", "price": "list_price"}


class _CountingHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.hits[self.path] += 1
        super().do_GET()


@pytest.fixture
def server(catalog):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_CountingHandler,
                                                                   directory=str(catalog)))
    srv.hits = defaultdict(int)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def test_rerun_downloads_nothing_twice(catalog, server, tmp_path):
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    rows = _rows()
    for r in rows:
        if r["image"].startswith("images/"):
            r["image"] = base + r["image"]
    pd.DataFrame(rows).to_csv(tmp_path / "http.csv", index=False)
    first = _run(tmp_path / "http.csv", tmp_path / "out")
    hits = dict(server.hits)
    assert max(hits.values()) == 1  # a photo shared by two rows is downloaded once
    assert "/images/missing.jpg" in hits  # a 404, remembered by the cache
    second = _run(tmp_path / "http.csv", tmp_path / "out")
    assert dict(server.hits) == hits  # nothing downloaded again
    assert (second.prepared, second.split_sizes) == (first.prepared, first.split_sizes)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["images"]["fetched"] == 0 and m["images"]["cached"] == first.prepared
    assert reason_key("image: http 404") in m["counts"]["failed_by_reason"]



# What each of synth's fault kinds must become: a failure with this reason, or a prepared row
SYNTH_FAULT_REASONS = {
    "na_url": "image: not a URL or path",
    "http_404": "image: http 404",
    "not_image": "image: not an image",
    "truncated_jpeg": "image: truncated image",
    "price_missing": "price: missing",
}


def test_synth_catalog_over_http_every_fault_kind(tmp_path):
    """synth's Burberry-schema catalog, photos served over HTTP, faults injected."""
    from productvlm.synth.faults import FAULT_KINDS
    from productvlm.synth.generate import synth

    cat = tmp_path / "cat"
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_CountingHandler,
                                                                   directory=str(cat)))
    srv.hits = defaultdict(int)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        synth(cat, n=40, seed=0, fault_rate=0.2, max_side=128, workers=1,
              image_base_url=f"http://127.0.0.1:{srv.server_address[1]}/images/")
        r = prepare(str(cat / "catalog.csv"), tmp_path / "out", progress=False, verbose=False)
    finally:
        srv.shutdown()
    with (cat / "faults.csv").open() as f:
        faults = list(csv.DictReader(f))
    assert {f["kind"] for f in faults} == set(FAULT_KINDS)
    with (tmp_path / "out" / "failures.csv").open() as f:
        failed = {int(x["row"]): x for x in csv.DictReader(f)}
    prepared = {row["source_row"]: (split, row) for split, rows in _splits(tmp_path / "out").items()
                for row in rows}
    assert r.rows_in == 40 == len(failed) + len(prepared)
    expected_failures = {int(f["row"]) for f in faults if f["kind"] in SYNTH_FAULT_REASONS}
    assert set(failed) == expected_failures  # no clean row fails
    for f in faults:
        row = int(f["row"])
        if f["kind"] in SYNTH_FAULT_REASONS:
            assert failed[row]["reason"].startswith(SYNTH_FAULT_REASONS[f["kind"]]), f
            assert failed[row]["product_code"] == f["product_code"]
        elif f["kind"] == "price_string":  # "1,290.00" parses
            written = f["detail"].split("'")[1]
            assert prepared[row][1]["price"] == float(written.replace(",", ""))
        else:  # duplicate_code: same product, other category2: kept, in its original's split
            original = int(f["detail"].rsplit(" ", 1)[1])
            assert prepared[row][0] == prepared[original][0]
            assert prepared[row][1]["product_code"] == prepared[original][1]["product_code"]


@pytest.mark.slow
def test_resume_after_kill_fetches_nothing_twice(catalog, tmp_path):
    import time

    class Slow(_CountingHandler):
        def do_GET(self):
            time.sleep(0.1)  # slow enough to kill the run halfway
            super().do_GET()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Slow, directory=str(catalog)))
    srv.hits = defaultdict(int)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/"
    rows = [{"product_code": i, "title": f"t{i}", "category": CATS[i % 3], "price": "10",
             "image": f"{base}images/{i}.jpg"} for i in range(N)]
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    args = [str(tmp_path / "c.csv"), "--out", str(tmp_path / "out"), "--preset", "simple",
            "--concurrency", "2", "--no-progress"]
    proc = subprocess.Popen([str(EXE), "prepare", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while sum(srv.hits.values()) < N // 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup, like kill -9
    _, err = proc.communicate()
    before = dict(srv.hits)
    assert 0 < len(before) < N, f"the first run should be cut off halfway; stderr: {err}"
    p = _cli(*args)
    srv.shutdown()
    assert p.returncode == 0, p.stderr
    # only requests in flight at the kill (at most --concurrency) may be repeated
    repeated = [k for k, v in srv.hits.items() if v > 1]
    assert len(repeated) <= 2 and len(srv.hits) == N
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["counts"]["prepared"] == N and m["images"]["cached"] >= len(before) - 2


def test_unreadable_jsonl_line_is_a_failure_not_a_crash(catalog, tmp_path):
    good = {"product_code": 1, "title": "Bag", "category": "BAGS", "price": 10,
            "image": "images/0.jpg"}
    (tmp_path / "c.jsonl").write_text(
        json.dumps(good) + "\n{oops\n" + json.dumps({**good, "product_code": 2}) + "\n")
    r = _run(tmp_path / "c.jsonl", tmp_path / "out", local_root=catalog)
    assert (r.rows_in, r.prepared, r.failed_by_reason) == (3, 2, {"unreadable row": 1})
    assert "1,,unreadable row (invalid JSON on line 2" in (tmp_path / "out" / "failures.csv"
                                                          ).read_text()
