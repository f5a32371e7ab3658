"""Trust against simple checks and odd pictures: the audit beside two checks that use no photo,
and doubt on every kind of non-product (issue "trust that holds").

Usage: .venv/bin/python bench/bench_audit_trust.py RUN [RUN ...] [--audit-n 1000] [--out DIR]
           [--before SRC]

Each RUN is a `productvlm demo --out RUN` folder (RUN/train, RUN/prepared), one per seed.
Per run, in the same process:

1. A fresh calibration (photo-layout gate, words' price model) fitted on the run's
   validation split and saved in RUN/train/calibration.
2. `productvlm audit` of a synth catalog none of the runs trained on (seed + 10, 5% wrong
   listed prices, faults.csv), scored per kind of error beside, in the same run, two checks
   fitted on the run's training split: the category median and a ridge on title words +
   category (cross-fitted; each flags above the 99th percentile of its training residuals,
   the audit's own 1% level). "before": the photo's judgment alone (what the audit was).
3. Non-products drawn by the bench (20 of each of six kinds) and the test split's products:
   the share marked low_confidence, and the share doubted as unlike the training photos.
4. With --before SRC (a checkout of the code before, e.g. a `git worktree`): the audit's time
   per product by that code and by this one, twice each, alternating, on the first run.

Targets: per kind, the audit's AUC at least the better baseline's; decimal slips: recall >=
0.95 at precision >= 0.9 (the score's precision at 95% recall); clean rows flagged near 1%;
low_confidence on >= 9 in 10 of every non-product kind, unlike-the-training-photos on <= 5% of
products; audit time per product <= 1.1x before.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from productvlm.evaluation.calibrate import fit_calibration  # noqa: E402
from productvlm.evaluation.listings import (  # noqa: E402
    MISPRICING_KINDS,
    known_errors,
    precision_at_recall,
    roc_auc,
)
from productvlm.inference import Predictor  # noqa: E402
from productvlm.prepared import load_prepared  # noqa: E402
from productvlm.rundir import RunDir  # noqa: E402
from productvlm.synth.nonproducts import KINDS, non_products  # noqa: E402
from productvlm.wordprice import WordPrice  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from bench_trust import EXE, unseen_catalog  # noqa: E402


def calibrated(run: Path) -> tuple[Predictor, object]:
    pred = Predictor.load(run / "train", batch_size=16)
    ds = load_prepared(run / "prepared", splits=("train", "validation", "test"))
    pred.calibration = fit_calibration(pred, ds["train"], ds["validation"])
    pred.calibration.save(RunDir(run / "train").calibration)
    return pred, ds


def doubt(pred: Predictor, ds: object, seed: int) -> dict:
    """Per kind: (low_confidence share, unlike-the-training-photos share)."""
    pics = non_products(20 * len(KINDS), seed=seed)
    odd = pred.predict([im for _, im in pics])
    test = pred.predict([r["image"].convert("RGB") for r in ds["test"]])
    out = {}
    for kind, preds in [*((k, [p for (kk, _), p in zip(pics, odd, strict=True) if kk == k])
                          for k in KINDS), ("products", test)]:
        out[kind] = (np.mean([bool(p.low_confidence) for p in preds]),
                     np.mean(["unlike the training" in (p.doubt or "") for p in preds]))
    return out


def baselines(ds: object, rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(score, flag) per audited row of the category median and the words' ridge, fitted on
    the training split; each flags above its training residuals' 99th percentile."""
    train = ds["train"]
    ty, tc, tt = np.log(np.array(train["price"], float)), np.array(train["category"]), \
        list(train["title"])
    y = np.log([float(r["listed_price"]) for r in rows])
    med = {c: float(np.median(ty[tc == c])) for c in set(tc.tolist())}
    at = lambda cats: np.array([med.get(c, float(np.median(ty))) for c in cats])  # noqa: E731
    median = np.abs(y - at([r["category"] for r in rows]))
    median_cut = np.quantile(np.abs(ty - at(tc)), 0.99)
    wp = WordPrice.fit(tt, list(tc), np.exp(ty))
    words = np.abs(y - wp.predict([r["title"] for r in rows], [r["category"] for r in rows]))
    words_cut = np.quantile(np.abs(ty - wp.predict(tt, list(tc))), 0.99)  # cross-fitted
    return {"category median": (median, median > median_cut),
            "ridge on words": (words, words > words_cut)}


def audit(run: Path, n: int, out: Path, ds: object) -> dict:
    cat = unseen_catalog(run, n, out)
    where = out / f"audit-{run.name}"
    shutil.rmtree(where, ignore_errors=True)  # an audit resumes from its parts otherwise
    subprocess.run([str(EXE), "audit", str(cat / "catalog.parquet"), "--model",
                    str(run / "train"), "--out", str(where)], check=True)
    with (where / "audit.csv").open() as f:
        rows = list(csv.DictReader(f))
    errors = known_errors(cat / "faults.csv")
    kinds = [errors.get(int(r["row"]), "clean") for r in rows]
    num = lambda k: np.array([float(r[k] or 0) for r in rows])  # noqa: E731
    scores = {"audit (after)": (num("surprise"), np.array([r["flagged"] == "yes" for r in rows])),
              "photo alone (before)": (num("photo_surprise"), num("p_photo") <= 0.01 + 1e-9)}
    scores |= baselines(ds, rows)
    return {"kinds": kinds, "scores": scores, "catalog": cat}


def table(audits: list[dict]) -> None:
    kinds = np.array([k for a in audits for k in a["kinds"]])
    clean = kinds == "clean"
    print(f"\n== pooled over {len(audits)} catalogs: {len(kinds)} listings, "
          f"{(~clean).sum()} wrong prices")
    print(f"  {'check':22}" + "".join(f"{k[6:]:>30}" for k in MISPRICING_KINDS)
          + "   flag precision; clean flagged")
    for name in audits[0]["scores"]:
        s = np.concatenate([a["scores"][name][0] for a in audits])
        f = np.concatenate([a["scores"][name][1] for a in audits])
        cells = []
        for kind in MISPRICING_KINDS:
            m = clean | (kinds == kind)
            pos = kinds[m] == kind
            cells.append(f"AUC {roc_auc(s[m], pos):.3f} rec {f[m][pos].mean():.2f} "
                         f"P@95 {precision_at_recall(s[m], pos):.2f}")
        prec = (f & ~clean).sum() / max(f.sum(), 1)
        print(f"  {name:22}" + "".join(f"{c:>30}" for c in cells)
              + f"   {prec:.3f}; {f[clean].mean():.2%}")


def timing(run: Path, before: Path, cat: Path, out: Path, limit: int = 400) -> None:
    """Seconds per product of the whole audit command, this code vs ``before``, alternating."""
    seconds: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(2):
        for name, src in (("before", before / "src"), ("after", ROOT / "src")):
            where = out / f"time-{name}"
            shutil.rmtree(where, ignore_errors=True)
            env = {**os.environ, "PYTHONPATH": str(src)}
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "productvlm.cli", "audit",
                            str(cat / "catalog.parquet"), "--model", str(run / "train"),
                            "--out", str(where), "--limit", str(limit)], check=True, env=env,
                           capture_output=True)
            seconds[name].append((time.perf_counter() - t0) / limit)
    b, a = min(seconds["before"]), min(seconds["after"])
    print(f"\n== audit time per product ({limit} products, best of 2, whole command): before "
          f"{b * 1000:.0f} ms, after {a * 1000:.0f} ms: {a / b:.2f}x (target <= 1.1x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--audit-n", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "audit-trust")
    ap.add_argument("--before", type=Path, help="a checkout of the code to time against")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    audits, doubts = [], []
    for i, run in enumerate(args.runs):
        pred, ds = calibrated(run)
        print(f"== {run}: calibrated ({json.dumps(pred.calibration.words.stats)})")
        doubts.append(doubt(pred, ds, seed=100 + i))
        del pred
        audits.append(audit(run, args.audit_n, args.out, ds))
    table(audits)
    print("\n== doubt: share marked low_confidence (and doubted as unlike the training photos)")
    for kind in [*KINDS, "products"]:
        lc = np.mean([d[kind][0] for d in doubts])
        un = np.mean([d[kind][1] for d in doubts])
        target = "<= 5% unlike" if kind == "products" else ">= 90% low_confidence"
        print(f"  {kind:12} low_confidence {lc:6.1%}  unlike {un:6.1%}   ({target})")
    if args.before:
        timing(args.runs[0], args.before, audits[0]["catalog"], args.out)


if __name__ == "__main__":
    main()
