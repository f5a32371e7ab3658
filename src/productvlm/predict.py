"""`productvlm predict`: title, category and price for photos given as paths, globs or URLs.

Usage:
    productvlm predict --model runs/demo/train shots/*.jpg https://example.com/bag.jpg
    productvlm predict --model runs/demo/train --json shots/*.jpg > answers.jsonl

A local file is read once and decoded once by :func:`productvlm.images.open_image`, the
decoder the server uses for uploads, so predict and serve give the model the same pixels;
URLs go through the catalog's fetcher (timeouts, retries, size caps). An unreadable image is
reported in its row and the others are answered. Exit status: 0 when every image was read,
1 when some were not, 2 on a bad model or flag.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from pydantic import Field

from productvlm.inference import Prediction, Predictor
from productvlm.inference.batch import Row, answer_rows
from productvlm.inference.options import BatchPredictionOptions
from productvlm.inference.sizing import plan_rows
from productvlm.inference.vllm_engine import load_engine
from productvlm.options import Flag, config_command


class PredictConfig(BatchPredictionOptions):
    """What `productvlm predict` runs with (flags, or a YAML file's ``predict:`` section);
    device, precision, engine, batch size, answer length and interval level are the
    prediction options every answering command shares (inference/options.py)."""

    model: str = Field(..., description="run directory, model folder or Hub id")
    images: list[str] = Field(..., min_length=1, description="image paths, globs or URLs")
    json_lines: bool = Field(False, description="one JSON object per line instead of a table")
    constrained: bool = Field(True, description="force answers into the target format")
    num_crops: int | None = Field(None, ge=1, description="override the run's num_crops")
    local_root: Path | None = Field(
        None, description="read local files only inside this folder (default: any file named)")
    ray: str | None = Field(None, description="answer on Ray Data: 'local', 'auto' or a "
                            "cluster address (ray://HOST:10001); unset: this process")
    ray_actors: int | None = Field(None, ge=1, description="model actors in the Ray pool "
                                   "(default: one per GPU of the cluster, else per CPU)")


def expand_inputs(inputs: Sequence[str]) -> list[tuple[str, str | None]]:
    """Each argument -> (name shown, source); globs expand to their matches, and a glob with
    no match becomes one row with source None. Local paths become absolute."""
    import glob
    import os

    out: list[tuple[str, str | None]] = []
    for arg in inputs:
        if arg.lower().startswith(("http://", "https://", "file:")):
            out.append((arg, arg))
        elif any(c in arg for c in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
            out += [(m, str(Path(m).absolute())) for m in matches] or [(arg, None)]
        else:
            out.append((arg, str(Path(arg).expanduser().absolute())))
    return out


def read_images(sources: list[tuple[str, str | None]], local_root: Path | None) -> list[Any]:
    """A PIL image (upright RGB) or an error message per source, in order.

    >>> read_images([("bag.jpg", "/shots/bag.jpg")], None)  # doctest: +SKIP
    [<PIL.Image.Image image mode=RGB size=800x1000>]
    """
    from productvlm.catalog.fetch import FetchConfig, fetch_images, read_local
    from productvlm.catalog.fetch_http import Fail, classify_source
    from productvlm.images import ImageRejected, decode_image

    root = (local_root or Path("/")).expanduser().resolve()
    cfg = FetchConfig(local_root=root, cache_dir=None, retries=1)
    out: list[Any] = [None] * len(sources)
    urls: list[tuple[int, str]] = []
    for i, (_, source) in enumerate(sources):
        if source is None:
            out[i] = "no file matches this pattern"
            continue
        try:
            kind, target = classify_source(source)
            if kind == "http":
                urls.append((i, source))
                continue
            data = read_local(target, root, cfg.max_bytes)
            out[i] = decode_image(io.BytesIO(data), cfg.max_pixels)
        except Fail as f:
            out[i] = f.reason
        except ImageRejected as e:
            out[i] = e.reason
    fetched = fetch_images([u for _, u in urls], cfg, progress=False) if urls else ()
    for (i, _), result in zip(urls, fetched, strict=True):
        try:  # the fetcher has checked these bytes: decoding them cannot fail but by a bug
            out[i] = (decode_image(io.BytesIO(result.data), cfg.max_pixels) if result.ok
                      else result.error or "unreadable")
        except ImageRejected as e:
            out[i] = e.reason
    return out


def predict_files(cfg: PredictConfig) -> int:
    """Print an answer (or the reason there is none) per image; 0 when every image was read,
    1 when some were not.

    >>> predict_files(PredictConfig(model="runs/demo/train", images=["bag.jpg"]))  # doctest: +SKIP
    0
    """
    from rich.console import Console
    from rich.table import Table

    sources = expand_inputs(cfg.images)
    unread = 0
    if cfg.json_lines:  # one line as each answer comes: a long list of files streams
        for name, readable, answer in _answers(cfg, sources):
            unread += not readable
            print(json.dumps({"image": name, **answer.to_dict()}, ensure_ascii=False),
                  flush=True)
    else:
        with _bar(len(sources)) as advance:
            answers = list(_answers(cfg, sources, advance))
        extras = list(dict.fromkeys(k for _, _, a in answers for k in a.extra))
        table = Table("image", "title", "category", "price", *extras, "range", "confidence",
                      "note")
        for name, readable, a in answers:
            unread += not readable
            price = (f"{a.price:,.2f} {a.currency or ''}".strip() if a.price is not None else "")
            span = (f"{a.price_low:,.0f}-{a.price_high:,.0f} ({a.interval_level:.0%})"
                    if a.price_low is not None else "")
            conf = "" if a.confidence is None else f"{a.confidence:.0%}"
            note = (f"[red]{a.error}[/]" if a.error else
                    f"[yellow]low confidence, a guess: {a.doubt}[/]" if a.low_confidence
                    else "")
            said = ["" if a.extra.get(k) is None else f"{a.extra[k]}" for k in extras]
            table.add_row(name, a.title or "", a.category or "", price, *said, span, conf, note)
        Console(soft_wrap=False).print(table)
    if unread:
        print(f"{unread} of {len(sources)} images could not be read", file=sys.stderr)
    return 1 if unread else 0


def load_predictor(cfg: PredictConfig) -> Predictor:
    """The predictor ``cfg`` asks for (here, or in each Ray actor)."""
    return load_engine(cfg.engine, cfg.model, device=cfg.device, precision=cfg.precision,
                       hub_kernels=cfg.hub_kernels, batch_size=cfg.batch_size,
                       max_new_tokens=cfg.max_new_tokens, constrained=cfg.constrained,
                       num_crops=cfg.num_crops, interval_level=cfg.interval_level)


def _answers(cfg: PredictConfig, sources: list[tuple[str, str | None]],
             progress: Callable[[int], None] | None = None,
             ) -> Iterator[tuple[str, bool, Prediction]]:
    """(name, whether the image was read, answer) per source, in order: through the batch
    engine in this process, or on a Ray Data pool of :class:`PredictActor` (``--ray``)."""
    if not cfg.ray:
        predictor = load_predictor(cfg)
        rows = _rows(sources, cfg.local_root, predictor.batch_size)
        for row, answer in answer_rows(rows, predictor, progress=progress):
            yield row.key, row.readable, answer
        return
    from productvlm.inference.raydata import run_on_ray

    size = plan_rows(cfg.batch_size)  # auto: each actor answers in batches of its own
    payloads = [json.dumps(sources[i:i + size]) for i in range(0, len(sources), size)]
    for text in run_on_ray(payloads, PredictActor, {"cfg": cfg.model_dump_json()},
                           address=cfg.ray, actors=cfg.ray_actors):
        lines = [json.loads(line) for line in text.splitlines()]
        for r in lines:
            yield r["image"], r["readable"], Prediction.from_dict(r["answer"])
        if progress is not None:
            progress(len(lines))


class PredictActor:
    """One model actor of ``predict --ray``: loads the model once, then reads and answers
    each batch of sources it is handed, returning one JSON line per image."""

    def __init__(self, cfg: str) -> None:
        self.cfg = PredictConfig.model_validate_json(cfg)
        self.predictor = load_predictor(self.cfg)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        out = []
        for payload in batch["text"]:
            sources = [(name, source) for name, source in json.loads(str(payload))]
            rows = [Row(name, image) for (name, _), image
                    in zip(sources, read_images(sources, self.cfg.local_root), strict=True)]
            out.append("\n".join(
                json.dumps({"image": row.key, "readable": row.readable,
                            "answer": answer.to_dict()}, ensure_ascii=False)
                for row, answer in answer_rows(rows, self.predictor)))
        return {"out": out}


def _rows(sources: list[tuple[str, str | None]], local_root: Path | None,
          batch: int) -> Iterator[Row]:
    """The batch engine's rows, read a few batches ahead (files and URLs fetched together),
    so a long list of photos never sits in memory at once."""
    step = 4 * batch
    for start in range(0, len(sources), step):
        chunk = sources[start:start + step]
        for (name, _), image in zip(chunk, read_images(chunk, local_root), strict=True):
            yield Row(name, image)


@contextmanager
def _bar(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar with answers/s on a terminal (stderr); its value advances it."""
    from productvlm.inference.predictor import AnswerBar

    if not sys.stderr.isatty():
        yield lambda n: None
        return
    bar = AnswerBar(total)
    try:
        yield bar.advance
    finally:
        bar.close()


def register(app: typer.Typer) -> None:
    """Add the `predict` command to the typer app (its options: :class:`PredictConfig`)."""

    @config_command(app, "predict", PredictConfig, section="predict",
                    flags={"model": Flag("--model", "-m"), "json_lines": Flag("--json")})
    def predict_command(
        cfg: PredictConfig,
        images: list[str] = typer.Argument(...),
    ) -> None:
        """Title, category and price for each product photo. Exit 1 if an image was unreadable."""
        raise typer.Exit(predict_files(cfg))
