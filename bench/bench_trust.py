"""The figures of calibrated prices and the catalog audit, on the demo's recipe and 3 catalogs.

Usage: .venv/bin/python bench/bench_trust.py RUN [RUN ...] [--audit-n 1000] [--out DIR]
       .venv/bin/python bench/bench_trust.py --memory-rows 20000 RUN

Each RUN is a `productvlm demo --out RUN` folder (RUN/train, RUN/prepared; make them with
`demo: {seed: S}` configs). Calibrations are fitted on the validation split where a run has
none (train does it for new runs). In the same run it prints:

1. Intervals on each test split and pooled: coverage of the 80% and 90% intervals against
   the 95% binomial range of the stated level, and their median width / price beside an
   honest baseline at the same level: a conformal interval around the true category's
   median training price (an oracle told the category), calibrated on the same validation
   split. Target: pooled coverage within 4 points; 80% width at least 25% narrower.
2. Category ECE and confidence ECE; non-products (plain colours, noise, text, landscapes
   drawn with synth's pen) against the test photos: ROC AUC of 1 - confidence (>= 0.9).
3. The audit of another seed's catalog (seed + 10, never trained on) with 5% wrong listed
   prices: per kind ROC AUC and precision at 95% recall of the surprise, beside a rule
   that flags prices far from the listed category's median; the flags' recall/precision.
4. Cost: products/s of the plain answer and of the audit's model work on the same test
   photos (decoded in memory), and end to end: `evaluate --no-calibrate` on a split of the
   audited catalog against `audit` of exactly those rows (commands, files, photos); the
   target is at most 1.5x the time.
With --memory-rows N: peak RSS of `productvlm audit` over an N-product synth catalog.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from productvlm.calibration import conformal_quantile  # noqa: E402
from productvlm.evaluation.calibrate import fit_calibration  # noqa: E402
from productvlm.evaluation.listings import roc_auc  # noqa: E402
from productvlm.evaluation.uncertainty import reliability  # noqa: E402
from productvlm.inference import Predictor  # noqa: E402
from productvlm.prepared import load_prepared  # noqa: E402
from productvlm.rundir import RunDir  # noqa: E402

EXE = Path(sys.executable).with_name("productvlm")


def predictor_for(run: Path) -> tuple[Predictor, object]:
    """The run's calibrated predictor (fitting and saving a calibration where it has none)."""
    pred = Predictor.load(run / "train", batch_size=16)
    ds = load_prepared(run / "prepared", splits=("train", "validation", "test"))
    if pred.calibration is None:
        pred.calibration = fit_calibration(pred, ds["train"], ds["validation"])
        pred.calibration.save(RunDir(run / "train").calibration)
    return pred, ds


def binomial_range(level: float, n: int) -> tuple[float, float]:
    sd = math.sqrt(level * (1 - level) / n)
    return level - 1.96 * sd, level + 1.96 * sd


def intervals(pred: Predictor, ds: object, images: list) -> dict:
    test = ds["test"]
    truth = np.array(test["price"])
    tp, tc = np.array(ds["train"]["price"]), np.array(ds["train"]["category"])
    median = {c: float(np.median(tp[tc == c])) for c in set(tc.tolist())}
    vy, vc = np.array(ds["validation"]["price"]), ds["validation"]["category"]
    out: dict = {"n": len(truth)}
    for level in (0.8, 0.9):
        pred.interval_level = level
        ps = pred.predict(images)
        inside = [p.price_low <= t <= p.price_high for p, t in zip(ps, truth, strict=True)]
        q = conformal_quantile(np.abs(np.log(vy) - np.log([median[c] for c in vc])), level)
        oracle = [median[c] * (math.exp(q) - math.exp(-q)) / t
                  for c, t in zip(test["category"], truth, strict=True)]
        oracle_in = [abs(math.log(t / median[c])) <= q
                     for c, t in zip(test["category"], truth, strict=True)]
        out[level] = {"coverage": float(np.mean(inside)),
                      "widths": [(p.price_high - p.price_low) / t
                                 for p, t in zip(ps, truth, strict=True)],
                      "oracle_widths": oracle, "oracle_coverage": float(np.mean(oracle_in))}
    pred.interval_level = 0.8
    out["predictions"] = pred.predict(images)
    return out


def main() -> None:  # noqa: C901, PLR0915  (one report, printed in order)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--audit-n", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "trust")
    ap.add_argument("--memory-rows", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.memory_rows:
        return memory(args.runs[0], args.memory_rows, args.out)
    pooled: dict = {0.8: [], 0.9: []}
    widths: dict = {0.8: ([], []), 0.9: ([], [])}
    audits, costs, ends = [], [], []
    for run in args.runs:
        pred, ds = predictor_for(run)
        images = [r["image"].convert("RGB") for r in ds["test"]]
        res = intervals(pred, ds, images)
        print(f"\n== {run}: test split, {res['n']} rows")
        for level in (0.8, 0.9):
            r = res[level]
            lo, hi = binomial_range(level, res["n"])
            pooled[level].append((r["coverage"], res["n"]))
            widths[level][0].extend(r["widths"])
            widths[level][1].extend(r["oracle_widths"])
            print(f"  {level:.0%} interval: coverage {r['coverage']:.3f} (95% binomial range "
                  f"{lo:.3f}-{hi:.3f}: {'in' if lo <= r['coverage'] <= hi else 'OUT'}); "
                  f"median width {np.median(r['widths']):.3f} of the price vs the "
                  f"true-category oracle's {np.median(r['oracle_widths']):.3f} "
                  f"(its coverage {r['oracle_coverage']:.3f})")
        ps, cats = res["predictions"], ds["test"]["category"]
        truth = ds["test"]["price"]
        right = [p.category == c for p, c in zip(ps, cats, strict=True)]
        usable = [p.category == c and abs(p.price / t - 1) <= 0.25
                  for p, c, t in zip(ps, cats, truth, strict=True)]
        from productvlm.synth.nonproducts import non_products

        odd = pred.predict([im for _, im in non_products(40, seed=0)])
        auc = roc_auc([1 - p.confidence for p in ps + odd], [False] * len(ps) + [True] * 40)
        print(f"  category ECE {reliability([p.category_prob for p in ps], right)['ece']:.3f}, "
              f"confidence ECE {reliability([p.confidence for p in ps], usable)['ece']:.3f}; "
              f"non-products vs test photos: ROC AUC of 1 - confidence {auc:.3f} (>= 0.9)")
        costs.append(cost(pred, images))
        print(f"  cost: plain answer {costs[-1][0]:.1f} products/s, audit {costs[-1][1]:.1f} "
              f"products/s: {costs[-1][0] / costs[-1][1]:.2f}x the time (<= 1.5x)")
        audits.append(audit(run, args.audit_n, args.out))
        ends.append(end_to_end(run, audits[-1]["catalog"], args.out))
    print("\n== pooled over the runs")
    for level in (0.8, 0.9):
        n = sum(k for _, k in pooled[level])
        cov = sum(c * k for c, k in pooled[level]) / n
        w, o = np.median(widths[level][0]), np.median(widths[level][1])
        print(f"  {level:.0%}: coverage {cov:.3f} ({100 * (cov - level):+.1f} points, target "
              f"within 4); median width {w:.3f} vs oracle {o:.3f}: {100 * (1 - w / o):.0f}% "
              f"narrower (target >= 25% at 80%)")
    pool_audits(audits)
    plain, audited = (sum(c[i] for c in costs) / len(costs) for i in (0, 1))
    print(f"  cost, model work: audit {plain / audited:.2f}x the plain answer's time "
          f"(target <= 1.5x)")
    ratio = sum(e[1] for e in ends) / sum(e[0] for e in ends)
    print(f"  cost, end to end: audit {ratio:.2f}x evaluate's time per product (target <= 1.5x)")


def cost(pred: Predictor, images: list) -> tuple[float, float]:
    """products/s of the plain answer and of the audit's model work, best of 2, same photos."""
    cal = pred.calibration
    given = [("Product", "X")] * len(images)
    plain = audited = math.inf
    for _ in range(2):
        pred.calibration = None
        t0 = time.perf_counter()
        pred.predict(images)
        plain = min(plain, time.perf_counter() - t0)
        pred.calibration = cal
        t0 = time.perf_counter()
        for s in range(0, len(images), pred.batch_size):
            pred.generate(images[s:s + pred.batch_size], grid=cal.grid,
                          given=given[s:s + pred.batch_size], answer_prices=False)
        audited = min(audited, time.perf_counter() - t0)
    return len(images) / plain, len(images) / audited


def unseen_catalog(run: Path, n: int, out: Path) -> Path:
    """A synth catalog the run never saw (its demo seed + 10) with 5% wrong listed prices,
    made once under ``out``."""
    import yaml

    seed = int(yaml.safe_load((run / "demo-config.yaml").read_text())["seed"])
    cat = out / f"catalog-seed{seed + 10}"
    if not (cat / "catalog.parquet").is_file():
        subprocess.run([str(EXE), "synth", "--out", str(cat), "-n", str(n), "--seed",
                        str(seed + 10), "--mispricing-rate", "0.05", "--overwrite"],
                       check=True, capture_output=True)
    return cat


def audit(run: Path, n: int, out: Path) -> dict:
    """Audit a never-seen synth catalog (seed + 10) with 5% wrong listed prices."""
    cat = unseen_catalog(run, n, out)
    where = out / f"audit-{run.name}"
    t0 = time.perf_counter()
    subprocess.run([str(EXE), "audit", str(cat / "catalog.parquet"), "--model",
                    str(run / "train"), "--out", str(where), "--faults",
                    str(cat / "faults.csv")], check=True)
    summary = json.loads((where / "audit.json").read_text())
    summary["seconds"] = time.perf_counter() - t0
    print(f"  audit of {cat.name}: {summary['audited']} products in {summary['seconds']:.0f} s "
          f"({summary['audited'] / summary['seconds']:.1f}/s), {summary['flagged']} flagged")
    for kind, v in summary["known_errors"].items():
        if isinstance(v, dict):
            print(f"    {kind:20} n={v['rows']:3}  AUC {v['auc']:.3f} (rule {v['rule_auc']:.3f})"
                  f"  precision at 95% recall {v['precision_at_95_recall']:.3f} (rule "
                  f"{v['rule_precision_at_95_recall']:.3f})  flags: recall "
                  f"{v['flag_recall']:.2f}, precision {v['flag_precision'] or 0:.2f}")
    print(f"    clean rows flagged: {summary['known_errors'].get('clean_flag_rate', 0):.3%}")
    return {"where": where, "faults": cat / "faults.csv", "catalog": cat}


def end_to_end(run: Path, cat: Path, out: Path) -> tuple[float, float]:
    """Seconds per product of `evaluate --no-calibrate` on a split of ``cat`` and of `audit`
    on exactly that split's rows, each a whole command (model load included)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prepared = out / f"prepared-{cat.name}"
    if not (prepared / "dataset").is_dir():
        subprocess.run([str(EXE), "prepare", str(cat / "catalog.parquet"), "--out",
                        str(prepared), "--val-fraction", "0.05", "--test-fraction", "0.9",
                        "--no-progress"], check=True, capture_output=True)
    test = load_prepared(prepared, splits=("test",))["test"]
    rows = sorted(test["source_row"])
    table = pq.read_table(cat / "catalog.parquet")
    subset = out / f"{cat.name}-test.parquet"
    pq.write_table(table.take(pa.array(rows)), subset)
    timings = []
    for cmd in ([str(EXE), "evaluate", "--model", str(run / "train"), "--data", str(prepared),
                 "--split", "test", "--no-calibrate", "--report-to", "none", "--out",
                 str(out / f"eval-{run.name}")],
                [str(EXE), "audit", str(subset), "--model", str(run / "train"), "--out",
                 str(out / f"audit-split-{run.name}")]):
        shutil.rmtree(cmd[-1], ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        timings.append((time.perf_counter() - t0) / len(rows))
    print(f"  end to end on {len(rows)} products: evaluate (plain) {1 / timings[0]:.1f}/s, "
          f"audit {1 / timings[1]:.1f}/s: {timings[1] / timings[0]:.2f}x the time")
    return timings[0], timings[1]


def pool_audits(audits: list[dict]) -> None:
    """The audit figures over every audited catalog together."""
    import csv

    from productvlm.evaluation.listings import known_errors, precision_at_recall, rule_scores

    kinds, surprise, rule = [], [], []
    for a in audits:
        errors = known_errors(a["faults"])
        with (a["where"] / "audit.csv").open() as f:
            rows = list(csv.DictReader(f))
        kinds += [errors.get(int(r["row"]), "clean") for r in rows]
        surprise += [float(r["surprise"] or 0) for r in rows]
        rule += list(rule_scores([float(r["listed_price"]) for r in rows],
                                 [r["category"] for r in rows]))
    k, s, r = np.array(kinds), np.array(surprise), np.array(rule)
    for kind in ("price_decimal_slip", "price_swap", "price_moderate"):
        m = (k == kind) | (k == "clean")
        pos = k[m] == kind
        print(f"  audit {kind:20} n={pos.sum():3}  AUC {roc_auc(s[m], pos):.3f} (rule "
              f"{roc_auc(r[m], pos):.3f})  precision at 95% recall "
              f"{precision_at_recall(s[m], pos):.3f} (rule {precision_at_recall(r[m], pos):.3f})")


def memory(run: Path, n: int, out: Path) -> None:
    """Peak RSS of `productvlm audit` over an n-product catalog (streamed)."""
    cat = out / f"catalog-{n}"
    if not (cat / "catalog.parquet").is_file():
        subprocess.run([str(EXE), "synth", "--out", str(cat), "-n", str(n), "--seed", "77",
                        "--max-side", "480", "--overwrite"], check=True)
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen([str(EXE), "audit", str(cat / "catalog.parquet"), "--model",
                             str(run / "train"), "--out", str(out / f"audit-{n}")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watch, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watch.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"audit failed with status {proc.returncode}")
    print(f"audit of {n} products: peak RSS {peak / 2**20:.0f} MB (target < 1024 MB), "
          f"{time.perf_counter() - t0:.0f} s, {n / (time.perf_counter() - t0):.1f} products/s")


if __name__ == "__main__":
    main()
