"""The one prediction path: photos -> answers -> parsed fields. evaluate, predict and serve
all call :class:`Predictor`.

Generation is batched greedy decoding with left padding and the KV cache, stopping at
``<|end|>`` (or EOS); answers are constrained to the target format by default
(:mod:`productvlm.constrained`), so every answer parses.

Usage:
    productvlm predict --model runs/demo/train shots/*.jpg https://example.com/bag.jpg

>>> predictor = Predictor.load("runs/demo/train")  # doctest: +SKIP
>>> predictor.predict([Image.open("lola-bag.jpg")])[0].title  # doctest: +SKIP
'Medium Lola Bag'
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from productvlm.errors import ProductVLMError
from productvlm.prompts import (
    END,
    QUESTION,
    ParsedAnswer,
    TargetFormat,
    parse_answer,
    render_prompt,
)

Progress = bool | Callable[[int, int], None] | None


@dataclass
class Prediction:
    """One photo's answer: the parsed fields, the raw text, and how long its batch took."""

    title: str | None
    category: str | None
    price: float | None
    currency: str | None
    raw: str
    parsed: ParsedAnswer = field(repr=False)
    latency_ms: float = 0.0  # wall time of the batch this photo was answered in

    @property
    def error(self) -> str | None:
        return self.parsed.error

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("parsed")
        return {**out, "ok": self.parsed.ok, "error": self.parsed.error}


@dataclass
class RunInfo:
    """What a model argument resolves to (see :func:`resolve_model`)."""

    weights: str  # Hub-format folder or Hub id of the (base) model
    processor: str  # folder or Hub id holding tokenizer + preprocessor config
    adapter: Path | None = None  # PEFT adapter folder to apply on ``weights``
    target_format: TargetFormat = "seed"
    question: str = QUESTION
    num_crops: int | None = None
    categories: list[str] | None = None
    currency: str | None = None


def _has_model(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def resolve_model(model: str | Path) -> RunInfo:
    """A training run directory (merged model preferred, else adapter), a Hub-format model
    folder, or a Hub id -> where the weights, processor, prompt and labels are.

    >>> resolve_model("runs/demo/train").categories  # doctest: +SKIP
    ['BAGS', 'COATS', ...]
    """
    path = Path(model).expanduser()
    if not path.exists():
        text = str(model)
        hub_id = (text.count("/") == 1 and not text.startswith((".", "~", "/"))
                  and not path.parent.is_dir())
        if not hub_id:
            raise ProductVLMError(f"{model}: model folder not found; pass a run directory "
                                  "(from `productvlm train`), a model folder or a Hub id")
        return RunInfo(weights=text, processor=text)  # a Hub id such as org/name
    if not path.is_dir():
        raise ProductVLMError(f"{model}: not a folder; pass a run directory or model folder")
    info = RunInfo(weights=str(path), processor=str(path))
    cfg_file, labels_file = path / "config.yaml", path / "labels.json"
    cfg: dict[str, Any] = {}
    if cfg_file.is_file():
        try:
            cfg = yaml.safe_load(cfg_file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ProductVLMError(f"{cfg_file}: unreadable YAML ({e})") from None
    info.target_format = cfg.get("target_format", "seed")
    info.question = cfg.get("question", QUESTION)
    info.num_crops = cfg.get("num_crops")
    if labels_file.is_file():
        try:
            labels = json.loads(labels_file.read_text())
        except json.JSONDecodeError as e:
            raise ProductVLMError(f"{labels_file}: not valid JSON ({e})") from None
        info.categories = [str(c) for c in labels.get("categories") or []] or None
        info.currency = labels.get("currency")
    if _has_model(path / "merged"):
        info.weights = str(path / "merged")
    elif (path / "adapter" / "adapter_config.json").is_file():
        info.adapter = path / "adapter"
        adapter_cfg = json.loads((info.adapter / "adapter_config.json").read_text())
        base = adapter_cfg.get("base_model_name_or_path") or cfg.get("model")
        if base and not Path(base).expanduser().exists() and cfg.get("model"):
            base = cfg["model"]  # a relative path saved from another working directory
        if not base:
            raise ProductVLMError(f"{info.adapter}: adapter names no base model")
        info.weights = str(base)
    elif not _has_model(path):
        raise ProductVLMError(f"{model}: no model here (no merged/, adapter/ or config.json)")
    for candidate in (path / "processor", Path(info.weights), path):
        if any((candidate / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            info.processor = str(candidate)
            break
    else:
        info.processor = info.weights
    return info


def _device_dtype(device: str, dtype: str) -> tuple[Any, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.device(device), torch.bfloat16 if bf16 else torch.float32
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
              "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in dtypes:
        raise ProductVLMError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return torch.device(device), dtypes[dtype]


class Predictor:
    """Batched, optionally constrained, greedy answers for product photos.

    Build it with :meth:`load` from a run directory / model folder / Hub id, or directly from
    an in-memory model and processor (as the training callback does).

    >>> p = Predictor(model, processor, categories=["BAGS", "COATS"])  # doctest: +SKIP
    >>> [x.category for x in p.predict(photos)]  # doctest: +SKIP
    ['BAGS', 'COATS']
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        target_format: TargetFormat = "seed",
        question: str = QUESTION,
        categories: Sequence[str] | None = None,
        currency: str | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 64,
        constrained: bool = True,
        model_path: str | None = None,
        adapter: str | None = None,
    ) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ProductVLMError("batch_size and max_new_tokens must be at least 1")
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        self.target_format, self.question = target_format, question
        self.categories = sorted(set(categories)) if categories else None
        self.currency = currency
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.constrained = constrained
        self.model_path, self.adapter = model_path, adapter
        self._grammar: Any = None
        self.tokens_generated = 0  # answer tokens so far, stop tokens included (for benches)
        self.constraint_seconds = 0.0  # time spent masking logits (for benches)

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_new_tokens: int = 64,
        constrained: bool = True,
        num_crops: int | None = None,
        categories: Sequence[str] | None = None,
    ) -> Predictor:
        """Load weights (+ adapter), processor, prompt, target format and training categories.

        ``categories`` overrides labels.json; without either, constrained decoding leaves the
        category as free text.

        >>> Predictor.load("runs/demo/train", batch_size=16).target_format  # doctest: +SKIP
        'seed'
        """
        info = resolve_model(model)  # first: a wrong path fails before torch is imported
        from productvlm.models.loading import load_processor

        dev, torch_dtype = _device_dtype(device, dtype)
        try:
            processor = load_processor(info.processor, num_crops=num_crops or info.num_crops)
            net = _load_weights(info, torch_dtype)
        except (OSError, ValueError) as e:
            if isinstance(e, ProductVLMError):
                raise
            raise ProductVLMError(f"{model}: cannot load the model ({e})") from None
        net.to(dev).eval()
        return cls(net, processor, target_format=info.target_format, question=info.question,
                   categories=categories or info.categories, currency=info.currency,
                   batch_size=batch_size, max_new_tokens=max_new_tokens,
                   constrained=constrained, model_path=str(model),
                   adapter=str(info.adapter) if info.adapter else None)

    def describe(self) -> dict[str, Any]:
        """How this predictor answers (shown by the server's /v1/model)."""
        return {"model_path": self.model_path, "adapter": self.adapter,
                "target_format": self.target_format, "question": self.question,
                "categories": self.categories, "currency": self.currency,
                "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens,
                "constrained": self.constrained, "device": str(self.model.device)}

    @property
    def grammar(self) -> Any:
        """The answer-format automaton over this tokenizer (built once, on first use)."""
        if self._grammar is None:
            from productvlm.constrained import AnswerGrammar, TokenVocab, answer_template

            template = answer_template(self.target_format, self.categories)
            self._grammar = AnswerGrammar(TokenVocab.from_tokenizer(self.tokenizer), template)
        return self._grammar

    def predict(self, images: Sequence[Any], progress: Progress = None) -> list[Prediction]:
        """Answer each image (PIL, RGB) in chunks of ``batch_size``; never raises on an answer
        that does not parse (its ``parsed.error`` says why).

        ``progress``: True for a progress bar with answers/s, or ``fn(done, total)``.
        """
        images = list(images)
        out: list[Prediction] = []
        bar = _Bar(len(images)) if progress is True else None
        try:
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                t0 = time.perf_counter()
                answers = self.generate(chunk)
                ms = (time.perf_counter() - t0) * 1000
                for raw in answers:
                    parsed = parse_answer(raw, self.target_format)
                    out.append(Prediction(parsed.title, parsed.category, parsed.price,
                                          self.currency, raw, parsed, round(ms, 1)))
                if bar is not None:
                    bar.advance(len(chunk))
                elif callable(progress):
                    progress(len(out), len(images))
        finally:
            if bar is not None:
                bar.close()
        return out

    def generate(self, images: Sequence[Any]) -> list[str]:
        """Raw answer texts (up to ``<|end|>``) for one batch of images."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        if not images:
            return []
        tok = self.tokenizer
        prompt = render_prompt(tok, self.question)
        batch = self.processor(text=[prompt] * len(images), images=[[im] for im in images],
                               return_tensors="pt", padding_side="left")
        device = self.model.device
        dtype = next(self.model.parameters()).dtype
        batch = {k: v.to(device, dtype=dtype) if k == "pixel_values" else v.to(device)
                 for k, v in batch.items()}
        end_id = tok.convert_tokens_to_ids(END)
        stops = [i for i in (end_id, tok.eos_token_id) if i is not None and i != tok.unk_token_id]
        pad = tok.pad_token_id if tok.pad_token_id is not None else stops[-1]
        processors = LogitsProcessorList()
        if self.constrained:
            try:
                processors.append(self.grammar.logits_processor(self.max_new_tokens))
            except ValueError as e:
                raise ProductVLMError(f"constrained decoding: {e}") from None
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False,
                                  num_beams=1, use_cache=True, eos_token_id=stops,
                                  pad_token_id=pad)
        with torch.inference_mode():
            ids = self.model.generate(**batch, generation_config=config,
                                      logits_processor=processors)
        new = ids[:, batch["input_ids"].shape[1]:].tolist()
        self.constraint_seconds += sum(getattr(p, "seconds", 0.0) for p in processors)
        for row in new:  # a finished row is padded after its stop token: not generated
            self.tokens_generated += next((i + 1 for i, t in enumerate(row) if t in stops),
                                          len(row))
        texts = tok.batch_decode(new, skip_special_tokens=False,
                                 clean_up_tokenization_spaces=False)
        return [_cut(t, [END, tok.eos_token or END, tok.pad_token or END]) for t in texts]


def _cut(text: str, stops: list[str]) -> str:
    for stop in stops:
        if stop and (at := text.find(stop)) != -1:
            text = text[:at]
    return text.strip()


def _load_weights(info: RunInfo, dtype: Any) -> Any:
    from transformers.utils import logging as hf_logging

    from productvlm.models.loading import load_model

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would clutter predict's output
    try:
        net = load_model(info.weights, dtype=dtype)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if info.adapter is not None:
        from peft import PeftModel

        # The base comes from resolve_model (it may differ from the path the adapter saved);
        # merged once here, generation then runs at the base model's speed.
        net = PeftModel.from_pretrained(net, str(info.adapter)).merge_and_unload()
    return net


class _Bar:
    """A rich progress bar on stderr with answers/s."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.t0 = time.perf_counter()
        self.progress = Progress(
            TextColumn("answering"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task("answers", total=total, rate="")
        self.progress.start()

    def advance(self, n: int) -> None:
        done = self.progress.tasks[0].completed + n
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, advance=n, rate=f"{rate:.2f} answers/s")

    def close(self) -> None:
        self.progress.stop()

