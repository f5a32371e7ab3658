"""A missed demo check says what made it, from evaluate's predictions.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from productvlm.demo import miss_reasons


def _row(title: str, cat: str, price: float, got: tuple[str, str, float | None],
         ok: bool = True) -> dict:
    ape = None if got[2] is None else abs(got[2] - price) / price
    return {"truth": {"title": title, "category": cat, "price": price},
            "answer": "Product: ...", "parsed": dict(zip(("title", "category", "price"), got,
                                                         strict=True)),
            "ok": ok, "error": None if ok else "answer does not match",
            "scores": {"price_ape": ape, "category_correct": cat == got[1],
                       "title_token_f1": 1.0 if title == got[0] else 0.0}}


def test_the_rows_behind_a_missed_check_are_named(tmp_path: Path) -> None:
    rows = [_row("Grey Silk Scarf", "SCARVES", 450.0, ("Check Trench Coat", "COATS", 3390.0)),
            _row("Lola Bag", "BAGS", 2290.0, ("Lola Bag", "BAGS", 2190.0)),
            _row("Trench Coat", "COATS", 2000.0, ("Trench Coat", "COATS", 2100.0)),
            _row("Belt", "BELTS", 500.0, ("", "BELTS", None), ok=False)]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mape = miss_reasons("price MAPE 0.2 < the true-category median's", path, top=1)
    assert mape[0] == "1 of 4 rows make 163.3 points of the MAPE:"
    assert mape[1] == ("'Grey Silk Scarf' (SCARVES, 450.00) read as 'Check Trench Coat' "
                       "(COATS, 3,390.00)")
    assert "SCARVES read as COATS (1x)" in miss_reasons("category accuracy 0.8 >= 0.9", path)[0]
    assert miss_reasons("parse rate 0.75 >= 0.99", path)[0].startswith("1 answers did not parse")
    assert miss_reasons("price MAPE", tmp_path / "absent.jsonl") == []
