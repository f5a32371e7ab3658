"""`productvlm synth`: a sample catalog with the Burberry dataset's exact schema, plus photos.

Usage: productvlm synth --out data/synth -n 1000 --seed 0 --fault-rate 0.05

Writes into ``--out``:

* ``catalog.parquet`` and ``catalog.csv``: the 17 columns of
  ``DBQ/Burberry.Product.prices.United.States`` with its Arrow types
  (:data:`~productvlm.synth.schema.BURBERRY_SCHEMA`), one row per product;
* ``images/<UUID>.jpg``: one procedurally drawn photo per product (light studio background,
  mostly portrait, 600-960 px, 30-200 KB); ``imageurl`` holds its absolute path, or
  ``--image-base-url`` + file name so a local HTTP server serving ``images/`` can host them;
* ``faults.csv`` (row, product_code, kind, detail): every injected fault, ``row`` counting
  data rows from 0 in both catalog files;
* ``config.yaml``: the resolved :class:`SynthConfig`.

What the photo shows decides the answer (see ``assortment.py`` for the tables):

=============  ==================================  =========================================
attribute      drawn as                            in the answer
=============  ==================================  =========================================
item (20)      silhouette (tote, Lola chain bag,   category3_code (TOTE BAGS, ...), the
               trench coat, sneakers, ...)         title's noun, the base price
finish         texture: check, quilting, leather   title words ("Check Cashmere"), price
               gloss, monogram, stripes, silk ...  x 0.7 .. x 19 (alligator)
variant        share of the frame (Mini .. Large,  first title word ("Medium", "Long",
               30ml .. 100ml) or silhouette        "Cat-eye Frame"), price x 0.55 .. x 1.8
colour (8)     body colour                         title word; fragrance line (Her, Hero)
=============  ==================================  =========================================

full_price = retail price point of base x finish x variant x lognormal(0, 0.07); ~8% of
products are discounted (flg_discount 1, price 50-80% of full_price). EUR columns use a
fixed rate of 0.9168. The same seed gives byte-identical files; the fault rate does not
change the products, only which rows carry faults.

Fault kinds (``--fault-rate`` of the rows, kinds in turn, row 0 always clean):
``na_url`` (imageurl "N.A.", no file), ``http_404`` (URL or path of a file never written),
``not_image`` (an HTML page saved as .jpg), ``truncated_jpeg`` (the file cut short),
``price_missing`` (full_price and full_price_eur null), ``price_string`` (full_price written
"1,290.00" -- in catalog.csv only, the Parquet file keeps its float64 column and the number),
``duplicate_code`` (a repeat of an earlier clean row's product under another category2).

Wrong listed prices (``--mispricing-rate`` of the rows, other rows than the faults', kinds in
turn), for scoring ``productvlm audit``: ``price_decimal_slip`` (x10 or /10),
``price_swap`` (two products of different categories exchange prices: both rows recorded),
``price_moderate`` (x0.6 or x1.5); the detail gives the true price.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer
from pydantic import Field, field_validator

from productvlm.answer import format_price
from productvlm.config import StageConfig, save_config
from productvlm.errors import ProductVLMError
from productvlm.options import Flag, config_command
from productvlm.synth import assortment as A
from productvlm.synth.faults import (
    FAULT_KINDS,
    MISPRICING_KINDS,
    damaged,
    inject_faults,
    inject_mispricing,
)
from productvlm.synth.schema import BURBERRY_SCHEMA

if TYPE_CHECKING:  # the renderer (PIL) loads on first use: `productvlm --help` stays quick
    from productvlm.synth.render import RenderSpec

USD_TO_EUR = 0.9168  # ECB reference rate around the real catalog's date, 2023-11-17
MAX_SIDE = 1280  # = render.GRAIN_SIDE: larger photos would get no grain
OUR_FILES = ("catalog.parquet", "catalog.csv", "faults.csv", "config.yaml")


class SynthConfig(StageConfig):
    """Options of ``productvlm synth``."""

    out: Path = Field(Path("data/synth"), description="output folder")
    n: int = Field(1000, ge=1, le=1_000_000, description="number of catalog rows")
    seed: int = Field(0, ge=0, description="same seed, byte-identical output")
    fault_rate: float = Field(0.0, ge=0.0, le=0.5, description="share of rows with a fault")
    mispricing_rate: float = Field(
        0.0, ge=0.0, le=0.5, description="share of rows with a wrong listed price (decimal "
        "slips, prices swapped across categories, x0.6 / x1.5), recorded in faults.csv")
    image_base_url: str | None = Field(
        None, description="imageurl = this URL + file name (serve images/ there); "
        "default: absolute file paths")
    max_side: int = Field(960, ge=64, le=MAX_SIDE, description="longest image side, px")
    jpeg_quality: int = Field(90, ge=30, le=95, description="JPEG quality")
    workers: int = Field(0, ge=0, description="render processes; 0 = one per CPU core")
    overwrite: bool = Field(False, description="replace an earlier synth output in --out")
    attributes: bool = Field(False, description="add colour and material columns (what the "
                             "photo shows and the title names), for answer fields")

    @field_validator("image_base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not re.match(r"^https?://[^/]+", v):
            raise ValueError("must start with http:// or https:// and a host")
        return v if v.endswith("/") else v + "/"


@dataclass
class SynthResult:
    """What :func:`synth` wrote, with counts."""

    out: Path
    parquet: Path
    csv: Path
    images: Path
    faults: Path
    config: Path
    n_rows: int
    n_images: int
    fault_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def products_per_s(self) -> float:
        return self.n_rows / self.seconds if self.seconds > 0 else float("inf")


def _pick(rng: np.random.Generator, options: tuple, weights: list[float]) -> Any:
    p = np.asarray(weights, float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _canvas(rng: np.random.Generator, max_side: int) -> tuple[int, int]:
    """Product-shot frame sizes: 80% portrait (4:5, 3:4, 2:3), some square, a few landscape."""
    long = min(max_side, int(rng.integers(600, 961)))
    kind = rng.random()
    ratio = float(rng.choice([1.25, 4 / 3, 1.5])) if kind < 0.8 else (
        1.0 if kind < 0.92 else float(rng.choice([0.75, 0.8])))
    w, h = (round(long / ratio), long) if ratio >= 1 else (long, round(long * ratio))
    return w, h


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


@dataclass(frozen=True)
class Attributes:
    """The visible choices behind one product: what its photo shows."""

    item: A.Item
    variant: A.Variant
    colour: str
    finish: A.Finish


@dataclass
class Products:
    """Clean catalog rows (BURBERRY_SCHEMA order) with their photo specs, paths, attributes."""

    rows: list[dict[str, Any]]
    specs: list[RenderSpec]
    paths: list[Path]
    attributes: list[Attributes]


def sample_products(cfg: SynthConfig) -> Products:
    """The products ``cfg`` describes, before faults and without drawing anything.

    >>> p = sample_products(SynthConfig(n=3, seed=0))
    >>> [a.item.category3 for a in p.attributes] == [r["category3_code"] for r in p.rows]
    True
    """
    from productvlm.synth.render import RenderSpec

    images = (cfg.out / "images").resolve()
    rng = np.random.default_rng(cfg.seed)
    items = A.ITEMS
    codes = (rng.choice(8_090_000 - 3_450_000, cfg.n, replace=False) + 3_450_000) * 10 + 1
    rows, specs, paths, attrs = [], [], [], []
    for i in range(cfg.n):
        item = _pick(rng, items, [it.weight for it in items])
        finish = _pick(rng, item.finishes, [f.weight for f in item.finishes])
        variant = _pick(rng, item.variants, [v.weight for v in item.variants])
        colour = item.colours[int(rng.integers(len(item.colours)))]
        cat1 = _pick(rng, tuple(c for c, _ in item.category1), [w for _, w in item.category1])
        r = rng.random()
        if r < 0.15:
            cat2 = A.MERCH_CATEGORY2[int(rng.integers(len(A.MERCH_CATEGORY2)))]
        elif cat1 == "KIDS" and r < 0.4:
            cat2 = A.KIDS_CATEGORY2
        else:
            cat2 = item.category2[int(rng.integers(len(item.category2)))]
        title = item.title(variant, colour, finish)
        noise = float(np.exp(rng.normal(0.0, 0.07)))
        full = A.price_point(item.base * finish.mult * variant.mult * noise)
        discounted = rng.random() < 0.08
        price = min(full, A.price_point(full * rng.uniform(0.5, 0.8))) if discounted else full
        uid = rng.bytes(16).hex().upper()
        name = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}.jpg"
        scale = variant.scale if variant.scale is not None else 0.78
        scale = float(np.clip(scale + rng.uniform(-0.025, 0.025), 0.2, 0.92))
        w, h = _canvas(rng, cfg.max_side)
        code = int(codes[i])
        rows.append({
            "website_name": "Burberry", "competence_date": "2023-11-17",
            "country_code": "USA", "currency_code": "USD", "brand": "BURBERRY",
            "category1_code": cat1, "category2_code": cat2, "category3_code": item.category3,
            "product_code": code, "title": title,
            "itemurl": f"https://us.burberry.com/{_slug(title)}-p{code}",
            "imageurl": (cfg.image_base_url or "") + name if cfg.image_base_url
            else str(images / name),
            "full_price": full, "price": price,
            "full_price_eur": round(full * USD_TO_EUR, 2),
            "price_eur": round(price * USD_TO_EUR, 2), "flg_discount": int(discounted),
            # written with --attributes only: the drawn colour, the finish's material
            "colour": colour, "material": finish.words or finish.texture.title(),
        })
        specs.append(RenderSpec(item.shape_for(variant), finish.texture, A.COLOURS[colour],
                                scale, w, h, int(rng.integers(2**63 - 1)), finish.flags))
        paths.append(images / name)
        attrs.append(Attributes(item, variant, colour, finish))
    return Products(rows, specs, paths, attrs)


def _write_image(task: tuple[Path, RenderSpec, str, int]) -> int:
    """Render one photo and write it, damaged as its fault kind says; returns bytes written."""
    from productvlm.synth.render import jpeg_bytes, render

    path, spec, kind, quality = task
    data = damaged(lambda: jpeg_bytes(render(spec), quality), kind, spec.seed)
    path.write_bytes(data)
    return len(data)


def _prepare_out(cfg: SynthConfig) -> Path:
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise ProductVLMError(f"{out}: exists and is not a folder; choose another --out")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present:
        ours = set(present) <= {*OUR_FILES, "images"}
        if not ours:
            raise ProductVLMError(
                f"{out}: folder is not empty and not a synth output ({', '.join(present[:5])}); "
                "choose an empty or new --out")
        if not cfg.overwrite:
            raise ProductVLMError(f"{out}: holds an earlier synth output; pass --overwrite "
                                  "to replace it or choose another --out")
        images = out / "images"
        if images.is_dir():
            strays = [p.name for p in images.iterdir() if p.suffix != ".jpg" or p.is_dir()]
            if strays:
                raise ProductVLMError(
                    f"{images}: holds files synth did not write ({', '.join(strays[:3])}); "
                    "move them or choose another --out")
            shutil.rmtree(images)
        for name in OUR_FILES:
            (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    return out


def _render_all(tasks: list[tuple], workers: int) -> int:
    if workers <= 1 or len(tasks) < 32:
        return sum(map(_write_image, tasks))
    # fork where there is one: workers start in milliseconds with everything imported
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    with ctx.Pool(workers) as pool:
        return sum(pool.imap_unordered(_write_image, tasks, chunksize=8))


def _write_tables(out: Path, rows: list[dict[str, Any]], faults: list[tuple],
                  attributes: bool = False) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = BURBERRY_SCHEMA
    if attributes:
        schema = schema.append(pa.field("colour", pa.string()))
        schema = schema.append(pa.field("material", pa.string()))
    names = schema.names
    table = pa.Table.from_pydict({c: [r[c] for r in rows] for c in names}, schema=schema)
    pq.write_table(table, out / "catalog.parquet")
    as_string = {row for row, _, kind, _ in faults if kind == "price_string"}
    with open(out / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(names)
        for i, r in enumerate(rows):
            cells = ["" if r[c] is None else r[c] for c in names]
            if i in as_string:
                cells[names.index("full_price")] = format_price(r["full_price"])
            w.writerow(cells)
    with open(out / "faults.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "product_code", "kind", "detail"])
        w.writerows(faults)


def run_synth(cfg: SynthConfig) -> SynthResult:
    """Generate the catalog ``cfg`` describes (see the module docstring)."""
    t0 = time.perf_counter()
    out = _prepare_out(cfg)
    images = out / "images"
    products = sample_products(cfg)
    rows, specs, paths = products.rows, products.specs, products.paths
    faults = inject_faults(cfg.n, cfg.seed, cfg.fault_rate, rows)
    faults = sorted(faults + inject_mispricing(cfg.n, cfg.seed, cfg.mispricing_rate, rows,
                                               {row for row, *_ in faults}))
    kind_of = {row: kind for row, _, kind, _ in faults}
    # no file for "N.A.", for a URL that must 404, or for a duplicate (the earlier row's photo)
    skip = ("na_url", "http_404", "duplicate_code")
    tasks = [(path, spec, kind_of.get(i, ""), cfg.jpeg_quality)
             for i, (spec, path) in enumerate(zip(specs, paths, strict=True))
             if kind_of.get(i, "") not in skip]
    workers = cfg.workers or os.cpu_count() or 1
    _render_all(tasks, workers)
    _write_tables(out, rows, faults, cfg.attributes)
    config_path = save_config(cfg, out)
    counts = {k: 0 for k in FAULT_KINDS + MISPRICING_KINDS}
    for _, _, kind, _ in faults:
        counts[kind] += 1
    return SynthResult(out, out / "catalog.parquet", out / "catalog.csv", images,
                       out / "faults.csv", config_path, len(rows), len(tasks), counts,
                       time.perf_counter() - t0)


def synth(
    out: str | Path = "data/synth",
    n: int = 1000,
    seed: int = 0,
    fault_rate: float = 0.0,
    mispricing_rate: float = 0.0,
    image_base_url: str | None = None,
    max_side: int = 960,
    jpeg_quality: int = 90,
    workers: int = 0,
    overwrite: bool = False,
    attributes: bool = False,
) -> SynthResult:
    """Write a sample catalog and its photos into ``out``; the CLI's signature.

    >>> res = synth("/tmp/cat", n=50, seed=1, fault_rate=0.1, overwrite=True)  # doctest: +SKIP
    >>> res.n_rows, res.fault_counts["na_url"]  # doctest: +SKIP
    (50, 1)
    """
    from pydantic import ValidationError

    try:
        cfg = SynthConfig(out=Path(out), n=n, seed=seed, fault_rate=fault_rate,
                          mispricing_rate=mispricing_rate, image_base_url=image_base_url,
                          max_side=max_side, jpeg_quality=jpeg_quality, workers=workers,
                          overwrite=overwrite, attributes=attributes)
    except ValidationError as e:
        first = e.errors()[0]
        raise ProductVLMError(f"synth: {first['loc'][0]}: {first['msg']} "
                              f"(got {first.get('input')!r})") from None
    return run_synth(cfg)


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to the productvlm CLI (its options: :class:`SynthConfig`)."""

    @config_command(app, "synth", SynthConfig, section="synth",
                    flags={"out": Flag("--out", "-o"), "n": Flag("-n", "--n")})
    def synth_command(cfg: SynthConfig) -> None:
        """Write a sample catalog (Burberry schema, Parquet + CSV) and its product photos."""
        from rich.console import Console
        from rich.table import Table

        res = run_synth(cfg)
        console = Console()
        console.print(f"wrote {res.n_rows} products and {res.n_images} image files to "
                      f"{res.out} in {res.seconds:.1f} s ({res.products_per_s:.0f} products/s)")
        faults = {k: v for k, v in res.fault_counts.items() if v}
        if faults:
            table = Table("fault", "rows", title=f"faults (listed in {res.faults.name})")
            for kind, count in faults.items():
                table.add_row(kind, str(count))
            console.print(table)
        else:
            console.print("no faults injected")
        console.print(f"catalog: {res.parquet}, {res.csv.name}; config: {res.config.name}")
