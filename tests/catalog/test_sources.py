"""Catalog readers and column mapping: every format yields the same rows, errors are clear."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from productvlm.catalog.schema import resolve_column_map
from productvlm.catalog.sources import BadRow, open_source
from productvlm.errors import ProductVLMError

ROWS = [
    {"product_code": 1, "title": "Medium Lola Bag", "category": "BAGS", "price": "1,290.00",
     "image": "a.jpg"},
    {"product_code": 2, "title": "Check Scarf", "category": "SCARVES", "price": "450",
     "image": "b.jpg"},
    {"product_code": 3, "title": "Trench Coat", "category": "COATS", "price": "",
     "image": "N.A."},
]


def _write(fmt: str, tmp_path: Path) -> str:
    df = pd.DataFrame(ROWS)
    if fmt == "csv":
        df.to_csv(tmp_path / "c.csv", index=False)
        return str(tmp_path / "c.csv")
    if fmt == "jsonl":
        (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        return str(tmp_path / "c.jsonl")
    if fmt == "json":
        (tmp_path / "c.json").write_text(json.dumps(ROWS))
        return str(tmp_path / "c.json")
    if fmt == "parquet":
        df.to_parquet(tmp_path / "c.parquet")
        return str(tmp_path / "c.parquet")
    if fmt == "hf-folder":  # what `load_dataset("parquet", data_files=...)` reads
        (tmp_path / "hf").mkdir()
        df.to_parquet(tmp_path / "hf" / "train.parquet")
        return str(tmp_path / "hf")
    if fmt == "hf-saved":
        import datasets

        datasets.Dataset.from_pandas(df).save_to_disk(tmp_path / "saved")
        return str(tmp_path / "saved")
    raise AssertionError(fmt)


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "parquet", "hf-folder", "hf-saved"])
def test_every_format_reads_the_same_rows(fmt, tmp_path):
    src = open_source(_write(fmt, tmp_path))
    assert set(src.columns) == set(ROWS[0])
    rows = list(src.rows(batch_size=2))  # batches smaller than the file
    assert [i for i, _ in rows] == [0, 1, 2]
    assert [r["title"] for _, r in rows] == [r["title"] for r in ROWS]
    assert [str(r["price"]) for _, r in rows] == ["1,290.00", "450", ""]
    assert str(rows[0][1]["product_code"]) == "1"


def test_csv_keeps_text_as_written(tmp_path):
    # a type sniffer would turn "0012" into 12 and "" into NaN
    (tmp_path / "c.csv").write_text("product_code,price,title\n0012,,x\n")
    (_, row), = open_source(str(tmp_path / "c.csv")).rows()
    assert row == {"product_code": "0012", "price": "", "title": "x"}


def test_jsonl_bad_line_is_a_row_not_a_crash(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"title": "a"}\n\n{not json\n[1, 2]\n{"title": "b", "late_key": 1}\n')
    src = open_source(str(p))
    assert src.columns == ["title", "late_key"]  # keys are collected over the whole file
    rows = [r for _, r in src.rows()]
    assert len(rows) == 4  # the blank line is not a row
    assert isinstance(rows[1], BadRow) and "line 3" in rows[1].reason
    assert isinstance(rows[2], BadRow) and "not a JSON object" in rows[2].reason


def test_unknown_suffix_and_missing_path(tmp_path):
    (tmp_path / "c.xlsx").write_text("x")
    with pytest.raises(ProductVLMError, match="unknown catalog format '.xlsx'"):
        open_source(str(tmp_path / "c.xlsx"))
    with pytest.raises(ProductVLMError, match="no such file"):
        open_source(str(tmp_path / "nope.csv"))


def test_unreadable_csv_and_parquet(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ProductVLMError, match="empty CSV"):
        open_source(str(tmp_path / "e.csv"))
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ProductVLMError, match="not a readable Parquet"):
        open_source(str(tmp_path / "b.parquet"))
    (tmp_path / "r.csv").write_text('a,b\n1,2\n3,4,5,6\n')
    with pytest.raises(ProductVLMError, match="r.csv: not a readable CSV"):
        list(open_source(str(tmp_path / "r.csv")).rows())


def test_hf_saved_dict_split_choice(tmp_path):
    import datasets

    d = datasets.Dataset.from_pandas(pd.DataFrame(ROWS))
    datasets.DatasetDict({"a": d, "b": d}).save_to_disk(tmp_path / "dd")
    with pytest.raises(ProductVLMError, match="several splits \\(a, b\\)"):
        open_source(str(tmp_path / "dd"))
    assert open_source(str(tmp_path / "dd"), split="b").num_rows == 3
    with pytest.raises(ProductVLMError, match="no split 'c'; splits present: a, b"):
        open_source(str(tmp_path / "dd"), split="c")


def test_column_map_presets_and_overrides():
    burberry_cols = ["product_code", "title", "category3_code", "full_price", "imageurl"]
    m = resolve_column_map(burberry_cols, "burberry")
    # optional preset columns the source lacks are skipped, required ones are kept
    assert m == {"product_code": "product_code", "title": "title", "category": "category3_code",
                 "price": "full_price", "image": "imageurl"}
    m = resolve_column_map(burberry_cols + ["price"], "burberry", {"price": "price"})
    assert m["price"] == "price"


def test_missing_column_error_names_it_and_lists_present():
    with pytest.raises(ProductVLMError) as e:
        resolve_column_map(["name", "cost", "url", "cat"], "simple", source="c.csv")
    msg = str(e.value)
    assert "c.csv: column 'title' (for title) is missing" in msg
    assert "columns present: name, cost, url, cat" in msg
    assert "\n" not in msg
    with pytest.raises(ProductVLMError, match="column 'nme' \\(for title\\) is missing"):
        resolve_column_map(["name"], None, {"title": "nme"})
    with pytest.raises(ProductVLMError, match="no column mapped for 'category'"):
        resolve_column_map(["name"], None, {"title": "name"})
    with pytest.raises(ProductVLMError, match="unknown field 'titel'"):
        resolve_column_map(["name"], "simple", {"titel": "name"})
    with pytest.raises(ProductVLMError, match="unknown preset 'amazon'"):
        resolve_column_map(["name"], "amazon")


def test_hub_id_goes_through_load_dataset(monkeypatch):
    # offline, so no network: the Hub path is taken and its failure is one clear line
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ProductVLMError) as e:
        open_source("DBQ/Burberry.Product.prices.United.States")
    msg = str(e.value)
    assert msg.startswith("DBQ/Burberry.Product.prices.United.States: could not load")
    assert "\n" not in msg
