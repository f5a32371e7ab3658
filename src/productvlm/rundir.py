"""The run directory's contract: what `productvlm train` writes and every later stage reads.

A run directory holds::

    config.yaml          the TrainConfig it ran with (target format, question, num_crops, ...)
    labels.json          {"categories": [...], "currency": "USD", ...}: what the model was
                         taught (title shape; the answer's extra fields and their labels)
    processor/           tokenizer + preprocessor config, as trained
    adapter/             the PEFT adapter (LoRA modes)
    merged/              a Hub-format model (full mode, or LoRA merged into the base)
    checkpoints/         resumable Trainer checkpoints
    train_log.jsonl      the Trainer's log history
    vision_warmup/       the vision warm-up's resumable state; vision_warmup.json its figures
    calibration/         price intervals, category probability, confidence (calibration/)
    training_items.json  product codes, image sha256 and title words of the training split

Both sides go through :class:`RunDir`; :func:`resolve_model` turns whatever a user passes as
``--model`` (a run directory, a Hub-format folder, a Hub id) into a :class:`RunInfo`.

>>> run = RunDir(Path("runs/demo/train"))  # doctest: +SKIP
>>> run.merged  # doctest: +SKIP
PosixPath('runs/demo/train/merged')
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from productvlm.answer import DEFAULT_SCHEMA, AnswerSchema, FieldDomain, TargetFormat
from productvlm.config import CONFIG_FILENAME
from productvlm.errors import ProductVLMError
from productvlm.prompts import QUESTION, title_words

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created by naming them)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILENAME

    @property
    def labels(self) -> Path:
        return self.root / "labels.json"

    @property
    def processor(self) -> Path:
        return self.root / "processor"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def vision_warmup_state(self) -> Path:
        return self.root / "vision_warmup" / "state.pt"

    @property
    def vision_warmup_stats(self) -> Path:
        return self.root / "vision_warmup.json"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration"

    @property
    def training_items(self) -> Path:
        return self.root / "training_items.json"

    def write_training_items(self, product_codes: list[str], image_sha256: list[str],
                             titles: list[str]) -> None:
        """What the model saw in training, so an audit can say which products it learned and
        which title words it never met."""
        items = {"product_codes": sorted({c for c in product_codes if c}),
                 "image_sha256": sorted({h for h in image_sha256 if h}),
                 "title_words": sorted({w for t in titles for w in title_words(t)})}
        self.training_items.write_text(json.dumps(items))

    def read_training_items(self) -> TrainingItems | None:
        """What :meth:`write_training_items` wrote, or None when the run has none."""
        if not self.training_items.is_file():
            return None
        try:
            items = json.loads(self.training_items.read_text())
        except json.JSONDecodeError as e:
            raise ProductVLMError(f"{self.training_items}: not valid JSON ({e})") from None
        return TrainingItems(set(items.get("product_codes", [])),
                             set(items.get("image_sha256", [])),
                             set(items.get("title_words", [])))

    def write_labels(self, categories: list[str], currency: str,
                     titles: list[str] | None = None, schema: AnswerSchema = DEFAULT_SCHEMA,
                     extra_values: Mapping[str, Sequence[Any]] | None = None) -> None:
        """labels.json: the categories the model was taught, the catalog's currency, the
        shape of its titles (their characters and longest length, which bound the title of
        a constrained answer), and the answer schema's extra fields with what training saw
        of each (``extra_values``: a field's training values)."""
        self.root.mkdir(parents=True, exist_ok=True)
        labels: dict[str, Any] = {"categories": sorted(categories), "currency": currency}
        if titles:
            labels["title_alphabet"] = "".join(sorted({c for t in titles for c in t}))
            labels["title_max_chars"] = max(len(t) for t in titles)
        if schema.extras:
            labels["answer_fields"] = schema.extras_json()
            labels["field_domains"] = {
                f.name: FieldDomain.of(f, (extra_values or {}).get(f.name, [])).to_dict()
                for f in schema.extras}
        self.labels.write_text(json.dumps(labels, indent=1))

    def read_schema(self) -> tuple[AnswerSchema, dict[str, FieldDomain]]:
        """The answer schema the run was trained with, and what training saw of each extra
        field (the default schema for a run without extras)."""
        labels = self._labels()
        schema = AnswerSchema.from_extras_json(labels.get("answer_fields"))
        domains = labels.get("field_domains") or {}
        return schema, {f.name: FieldDomain.from_dict(domains.get(f.name) or {})
                        for f in schema.extras}

    def _labels(self) -> dict[str, Any]:
        """labels.json as a mapping ({} when there is none)."""
        if not self.labels.is_file():
            return {}
        try:
            return json.loads(self.labels.read_text())
        except json.JSONDecodeError as e:
            raise ProductVLMError(f"{self.labels}: not valid JSON ({e})") from None

    def read_labels(self) -> tuple[list[str] | None, str | None]:
        """(categories, currency) from labels.json; (None, None) when there is none."""
        labels = self._labels()
        return [str(c) for c in labels.get("categories") or []] or None, labels.get("currency")

    def read_title_shape(self) -> tuple[str | None, int | None]:
        """(characters, longest length) of the training titles; (None, None) for a run
        trained before labels.json had them."""
        labels = self._labels()
        longest = labels.get("title_max_chars")
        return labels.get("title_alphabet") or None, int(longest) if longest else None

    def read_config(self) -> dict[str, Any]:
        """config.yaml as a plain mapping ({} when absent): read by inference, which must not
        depend on training's typed config."""
        if not self.config.is_file():
            return {}
        try:
            return yaml.safe_load(self.config.read_text()) or {}
        except yaml.YAMLError as e:
            raise ProductVLMError(f"{self.config}: unreadable YAML ({e})") from None


@dataclass(frozen=True)
class TrainingItems:
    """The training split's product codes, image hashes and title words."""

    product_codes: set[str]
    image_sha256: set[str]
    title_words: set[str]


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint that was saved to the end, or None.

    A `kill -9` while a checkpoint is written leaves a folder without (or with a torn)
    trainer_state.json, which the Trainer writes last; resuming skips such a folder, and
    the run saves over it when it gets there again.

    >>> last_complete_checkpoint(Path("runs/demo/checkpoints"))  # doctest: +SKIP
    'runs/demo/checkpoints/checkpoint-120'
    """
    found = []
    for path in ckpt_dir.glob("checkpoint-*") if ckpt_dir.is_dir() else ():
        if re.fullmatch(r"checkpoint-\d+", path.name):
            found.append((int(path.name.split("-")[1]), path))
    for step, path in sorted(found, reverse=True):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
            if state["global_step"] == step:
                return str(path)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        print(f"{path}: incomplete (interrupted while saving); skipped", file=sys.stderr)
    return None


def is_hub_id(name: str) -> bool:
    """Whether a name that is not an existing path reads as a Hub id (``owner/name``).

    >>> is_hub_id("microsoft/Phi-3-vision-128k-instruct"), is_hub_id("runs/demo/train")
    (True, False)
    >>> is_hub_id("./model"), is_hub_id("model"), is_hub_id("a/b/c")
    (False, False, False)
    """
    return (name.count("/") == 1 and not name.startswith((".", "/", "~"))
            and "\\" not in name and all(name.split("/")))


def has_model(folder: Path) -> bool:
    """A Hub-format model folder (config.json) is here."""
    return (folder / "config.json").is_file()


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
    run: RunDir | None = None  # the run directory, when the model is one
    title_alphabet: str | None = None  # the training titles' characters (labels.json)
    title_max_chars: int | None = None  # ... and their longest length
    schema: AnswerSchema = DEFAULT_SCHEMA  # the answer's fields (labels.json)
    #: what training saw of each extra field (labels.json)
    domains: dict[str, FieldDomain] = field(default_factory=dict)


def resolve_model(model: str | Path) -> RunInfo:
    """A training run directory (merged model preferred, else adapter), a Hub-format model
    folder, or a Hub id -> where the weights, processor, prompt and labels are.

    >>> resolve_model("runs/demo/train").categories  # doctest: +SKIP
    ['BAGS', 'COATS', ...]
    """
    path = Path(model).expanduser()
    if not path.exists():
        text = str(model)
        if not is_hub_id(text) or path.parent.is_dir():
            raise ProductVLMError(f"{model}: model folder not found; pass a run directory "
                                  "(from `productvlm train`), a model folder or a Hub id")
        return RunInfo(weights=text, processor=text)  # a Hub id such as org/name
    if not path.is_dir():
        raise ProductVLMError(f"{model}: not a folder; pass a run directory or model folder")
    run = RunDir(path)
    cfg = run.read_config()
    categories, currency = run.read_labels()
    alphabet, longest = run.read_title_shape()
    schema, domains = run.read_schema()
    info = RunInfo(weights=str(path), processor=str(path),
                   target_format=cfg.get("target_format", "seed"),
                   question=cfg.get("question", QUESTION), num_crops=cfg.get("num_crops"),
                   categories=categories, currency=currency, run=run,
                   title_alphabet=alphabet, title_max_chars=longest, schema=schema,
                   domains=domains)
    if has_model(run.merged):
        info.weights = str(run.merged)
    elif (run.adapter / "adapter_config.json").is_file():
        info.adapter = run.adapter
        adapter_cfg = json.loads((run.adapter / "adapter_config.json").read_text())
        base = adapter_cfg.get("base_model_name_or_path") or cfg.get("model")
        if base and not Path(base).expanduser().exists() and cfg.get("model"):
            base = cfg["model"]  # a relative path saved from another working directory
        if not base:
            raise ProductVLMError(f"{run.adapter}: adapter names no base model")
        info.weights = str(base)
    elif not has_model(path):
        raise ProductVLMError(f"{model}: no model here (no merged/, adapter/ or config.json)")
    for candidate in (run.processor, Path(info.weights), path):
        if any((candidate / f).is_file() for f in TOKENIZER_FILES):
            info.processor = str(candidate)
            break
    else:
        info.processor = info.weights
    return info
