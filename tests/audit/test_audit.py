"""`productvlm audit` end to end on a tiny calibrated model and a synth catalog with wrong
listed prices and broken rows: nothing lost, ranked, resumable, the same on 2 processes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from productvlm.audit.outputs import COLUMNS
from productvlm.audit.run import AuditConfig, audit
from productvlm.errors import ProductVLMError

EXE = Path(sys.executable).with_name("productvlm")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def _config(run: dict[str, Path], out: Path, **kw: Any) -> AuditConfig:
    cat = run["audit_catalog"]
    return AuditConfig(model=str(run["run"]), source=str(cat / "catalog.parquet"), out=out,
                       batch_size=6, faults=cat / "faults.csv", **kw)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def audited(calibrated_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "out"
    audit(_config(calibrated_run, out))
    return out


def test_every_row_is_audited_or_failed_and_ranked(audited: Path,
                                                   calibrated_run: dict[str, Path]) -> None:
    rows, failed = _csv(audited / "audit.csv"), _csv(audited / "failures.csv")
    summary = json.loads((audited / "audit.json").read_text())
    assert summary["rows_in"] == 40 == len(rows) + len(failed)
    assert list(rows[0]) == list(COLUMNS)
    assert {r["row"] for r in rows}.isdisjoint({r["row"] for r in failed})
    faults = _csv(calibrated_run["audit_catalog"] / "faults.csv")
    broken = {f["row"] for f in faults if f["kind"] in ("na_url", "http_404", "not_image",
                                                        "truncated_jpeg", "price_missing")}
    assert {r["row"] for r in failed} == broken
    judged = [float(r["surprise"]) for r in rows if r["surprise"]]
    assert judged == sorted(judged, reverse=True) and len(judged) > 20
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    for r in rows:
        assert r["flagged"] in ("yes", "no") and r["why"]
        assert r["in_training"] == "no"  # another catalog: none of its products was trained on
        if r["surprise"]:
            assert float(r["interval_low"]) <= float(r["predicted_price"]) <= \
                float(r["interval_high"])
    flagged = [r for r in rows if r["flagged"] == "yes"]
    assert summary["flagged"] == len(flagged)
    assert all("further out than any correct price" in r["why"] for r in flagged)


def test_known_errors_are_scored_beside_the_rule(audited: Path) -> None:
    known = json.loads((audited / "audit.json").read_text())["known_errors"]
    kinds = [k for k in known if k.startswith("price_")]
    assert kinds and set(kinds) <= {"price_decimal_slip", "price_swap", "price_moderate"}
    for kind in kinds:
        assert set(known[kind]) >= {"rows", "auc", "rule_auc", "precision_at_95_recall",
                                    "rule_precision_at_95_recall", "flag_recall"}
    html = (audited / "audit.html").read_text()
    assert "Against the known errors" in html and "data:image/png;base64" in html


def test_a_product_seen_in_training_is_marked(calibrated_run: dict[str, Path],
                                              tmp_path: Path) -> None:
    run = calibrated_run["run"]
    items = json.loads((run / "training_items.json").read_text())
    first = next(r for r in _csv(calibrated_run["audit_catalog"] / "catalog.csv")
                 if r["imageurl"] != "N.A.")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    items["product_codes"].append(first["product_code"])
    (copy / "training_items.json").write_text(json.dumps(items))
    cfg = _config(calibrated_run, tmp_path / "out", limit=6)
    audit(cfg.model_copy(update={"model": str(copy)}))
    marked = {r["product_code"]: r["in_training"] for r in _csv(tmp_path / "out" / "audit.csv")}
    assert marked[first["product_code"]] == "yes"
    assert list(marked.values()).count("yes") == 1


def test_ctrl_c_then_rerun_redoes_no_finished_batch(calibrated_run: dict[str, Path],
                                                    audited: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import productvlm.audit.work as work

    real, calls = work.answer_batches, []

    def interrupt_second(*args: Any, **kwargs: Any) -> Any:
        for n, answered in enumerate(real(*args, **kwargs)):
            if n == 1:
                raise KeyboardInterrupt
            calls.append(sum(row.readable for row, _ in answered))
            yield answered

    def counted(*args: Any, **kwargs: Any) -> Any:
        for answered in real(*args, **kwargs):
            calls.append(sum(row.readable for row, _ in answered))
            yield answered

    monkeypatch.setattr(work, "answer_batches", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        audit(_config(calibrated_run, tmp_path))
    first = calls[0]
    calls.clear()
    monkeypatch.setattr(work, "answer_batches", counted)
    audit(_config(calibrated_run, tmp_path))
    total = sum(1 for r in _csv(audited / "audit.csv"))
    assert sum(calls) == total - first  # the finished batch was not judged again
    assert (tmp_path / "audit.csv").read_text() == (audited / "audit.csv").read_text()


def test_bad_inputs_are_one_line_errors(calibrated_run: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(calibrated_run["run"], bare)
    shutil.rmtree(bare / "calibration")
    with pytest.raises(ProductVLMError, match="no calibration for audits"):
        audit(_config(calibrated_run, tmp_path / "o").model_copy(update={"model": str(bare)}))
    with pytest.raises(ProductVLMError, match="no calibration there"):
        audit(_config(calibrated_run, tmp_path / "o").model_copy(
            update={"model": str(bare), "calibration": tmp_path}))
    # evaluate's calibration, elsewhere, is passed by --calibration (here: the run's own)
    elsewhere = tmp_path / "eval" / "calibration"
    shutil.copytree(calibrated_run["run"] / "calibration", elsewhere)
    cfg = _config(calibrated_run, tmp_path / "o3").model_copy(
        update={"model": str(bare), "calibration": elsewhere, "limit": 6})
    assert audit(cfg).is_file()
    res = subprocess.run([str(EXE), "audit", "--model", str(calibrated_run["run"]),
                          str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "nope.csv: no such file" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_the_same_audit_as_one(calibrated_run: dict[str, Path],
                                                   audited: Path, tmp_path: Path) -> None:
    cat = calibrated_run["audit_catalog"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "productvlm.cli", "audit",
           str(cat / "catalog.parquet"), "--model", str(calibrated_run["run"]),
           "--out", str(tmp_path), "--batch-size", "6", "--faults", str(cat / "faults.csv")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["rank0.jsonl",
                                                                      "rank1.jsonl"]
    for name in ("audit.csv", "failures.csv"):
        assert (tmp_path / name).read_text() == (audited / name).read_text(), name


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_the_audit(calibrated_run: dict[str, Path], audited: Path,
                                              tmp_path: Path) -> None:
    cat = calibrated_run["audit_catalog"]
    cmd = [str(EXE), "audit", str(cat / "catalog.parquet"), "--model",
           str(calibrated_run["run"]), "--out", str(tmp_path), "--batch-size", "6"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    part = tmp_path / "parts" / "rank0.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if part.is_file() and part.read_text().count("\n") >= 6:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = part.read_text().count("\n") if part.is_file() else 0
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    if done_before:
        assert "resuming" in res.stderr
    assert _same_rows(tmp_path, audited)
    written = []
    for line in part.read_text().splitlines():
        try:
            written.append(json.loads(line)["row"])
        except json.JSONDecodeError:  # the line the kill tore
            continue
    assert sorted(written) == list(range(40))  # every row once: nothing redone, nothing lost


def _same_rows(a: Path, b: Path) -> bool:
    """The same rows and verdicts (a batch cut by the kill may be redone in another batch
    shape, which can move a float's last digit)."""
    key = lambda p: sorted((r["row"], r["flagged"]) for r in _csv(p / "audit.csv"))  # noqa: E731
    return key(a) == key(b)


# ---------------------------------------------------------------- on Ray Data
def _watch_and_kill_first_actor(parts: Path, killed: dict[str, Any]) -> None:
    """Kill -9 the Ray actor that writes the first part line, as soon as it is on disk."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not killed:
        for part in parts.glob("rank-ray-*.jsonl") if parts.is_dir() else ():
            if part.read_text().count("\n"):
                pid = int(part.name.split("-")[2])
                killed["rows_then"] = sum(p.read_text().count("\n")
                                          for p in parts.glob("rank*.jsonl"))
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
        time.sleep(0.05)


def test_ray_pool_gives_the_same_audit_even_when_an_actor_is_killed(
        calibrated_run: dict[str, Path], audited: Path, tmp_path: Path) -> None:
    import threading

    pytest.importorskip("ray.data")
    killed: dict[str, Any] = {}
    watcher = threading.Thread(target=_watch_and_kill_first_actor,
                               args=(tmp_path / "parts", killed), daemon=True)
    watcher.start()
    audit(_config(calibrated_run, tmp_path, ray="local", ray_actors=2))
    watcher.join(timeout=5)
    assert killed.get("pid"), "no actor wrote a part line"
    rows, failed = _csv(tmp_path / "audit.csv"), _csv(tmp_path / "failures.csv")
    assert killed["rows_then"] < len(rows)  # it died with work left, which others then did
    for name in ("audit.csv", "failures.csv"):  # every row exactly once, as in one process
        assert (tmp_path / name).read_text() == (audited / name).read_text(), name
    assert failed and len(rows) + len(failed) == 40
    assert not (tmp_path / "ray-plan").exists()  # the streamed plan's files, once done


def test_ray_is_a_clear_error_where_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from productvlm.inference.raydata import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ProductVLMError, match=r"pip install 'productvlm\[ray\]'"):
        import_ray()


def test_the_models_answer_fields_beside_what_the_listing_says(
        calibrated_run: dict[str, Path], tmp_path: Path) -> None:
    """A model that also says a colour: audit.csv sets the listing's colour (the catalog's
    column of that name) beside the photo's and names the rows where they differ; a catalog
    without the column is still audited, with the model's colour alone."""
    from productvlm.answer import DEFAULT_SCHEMA, FieldDomain, known_field
    from productvlm.synth.assortment import COLOURS
    from productvlm.synth.generate import synth

    run = tmp_path / "run"
    shutil.copytree(calibrated_run["run"], run)
    labels = json.loads((run / "labels.json").read_text())
    labels["answer_fields"] = DEFAULT_SCHEMA.with_extras([known_field("colour")]).extras_json()
    labels["field_domains"] = {"colour": FieldDomain(tuple(COLOURS)).to_dict()}
    (run / "labels.json").write_text(json.dumps(labels))
    cat = synth(tmp_path / "cat", n=12, seed=5, max_side=160, workers=1, attributes=True).out
    out = tmp_path / "audit"
    audit(AuditConfig(model=str(run), source=str(cat / "catalog.parquet"), out=out,
                      batch_size=6))
    rows = _csv(out / "audit.csv")
    assert len(rows) == 12 and list(rows[0])[-3:] == ["listed_colour", "model_colour",
                                                      "fields_differ"]
    listed = {r["row"]: r["listed_colour"] for r in rows}
    truth = pd.read_parquet(cat / "catalog.parquet")["colour"]
    assert all(listed[str(i)] == c for i, c in enumerate(truth))
    assert all(r["model_colour"] in COLOURS for r in rows)
    assert [r["fields_differ"] == "colour" for r in rows] == \
        [r["listed_colour"] != r["model_colour"] for r in rows]
    summary = json.loads((out / "audit.json").read_text())
    assert summary["fields_differ"] == sum(r["fields_differ"] == "colour" for r in rows)
    # the same catalog without its colour column: every row audited, the photo's colour alone
    bare = tmp_path / "bare.parquet"
    pd.read_parquet(cat / "catalog.parquet").drop(columns=["colour"]).to_parquet(bare)
    audit(AuditConfig(model=str(run), source=str(bare), out=tmp_path / "bare", batch_size=6))
    rows = _csv(tmp_path / "bare" / "audit.csv")
    assert len(rows) == 12 and list(rows[0])[-2:] == ["model_colour", "fields_differ"]
