"""Typed run configs: defaults < YAML file < command-line flags, saved beside every output.

Every stage has a pydantic model derived from :class:`StageConfig` (it lives next to the
stage's code, e.g. ``PrepareConfig`` in ``catalog/prepare.py``). The CLI calls
:func:`resolve_config` with the YAML file the user named (if any) and the flags they actually
typed, and the stage writes the result with :func:`save_config` into its output folder, so a
run can always be reproduced from the folder alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from productvlm.errors import ProductVLMError

C = TypeVar("C", bound="StageConfig")

CONFIG_FILENAME = "config.yaml"


HUB_KERNELS_HELP = ("load kernels from the Hugging Face Hub (transformers' use_kernels) in "
                    "place of the built-in attention, norm and MLP code; needs the Hub, so off: "
                    "offline GPU machines then train and answer with the built-in code")

#: The one field every stage that loads a model has (train, evaluate, predict, serve, audit):
#: ``hub_kernels: false`` unless a user opts in. transformers 5.25 turns Hub kernels on by
#: default and fetches them at the first CUDA step, which fails on a machine without the Hub.
HubKernels = Annotated[bool, Field(description=HUB_KERNELS_HELP)]


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check across several keys
        return f"{source}: {msg}"
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "missing":
        flag = "--" + key.replace("_", "-")
        return f"{source}: '{key}' is required; pass {flag} or set it in a config file"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; remove it or check the spelling"
    return f"{source}: key '{key}': {msg} (got {first.get('input')!r})"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error naming the file when it is not one.

    >>> load_yaml("configs/burberry-phi3v-lora.yaml")["train"]["epochs"]  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise ProductVLMError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProductVLMError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ProductVLMError(f"{p}: expected a mapping of keys to values at the top level")
    return data


def resolve_config(
    cls: type[C],
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    section: str | None = None,
) -> C:
    """Build ``cls`` from its defaults, then the YAML file, then flags that were given.

    ``overrides`` holds only the flags the user typed (``None`` values are dropped, so an
    untouched flag never hides a value from the file). ``section`` picks a sub-mapping of the
    file (``train:`` in a file that configures several stages); a file without that key is
    used whole. A mapping given (``map``, ``fetch``) is merged over the file's key by key.

    >>> from productvlm.catalog.prepare import PrepareConfig  # doctest: +SKIP
    >>> resolve_config(PrepareConfig, "prepare.yaml", {"seed": 3}, section="prepare")
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if config_file is not None:
        raw = load_yaml(config_file)
        if section is not None and isinstance(raw.get(section), dict):
            raw = raw[section]
        data.update(raw)
        source = str(config_file)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return cls.model_validate(_merge(data, given))
    except ValidationError as e:
        loc = e.errors()[0]["loc"]
        if loc and loc[0] in given:
            source = "command-line flag"
        elif loc and loc[0] not in data and config_file is None:
            source = "command line"  # e.g. a required value nobody gave
        raise ProductVLMError(_describe(e, source)) from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, mappings key by key (a flag's ``--map`` or ``--concurrency``
    changes one key of the file's ``map:`` or ``fetch:``, not the whole mapping)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = _merge(out[key], value)
        out[key] = value
    return out


def parse_pairs(pairs: list[str] | None, flag: str) -> dict[str, str]:
    """Turn ``["title=name", "price=list_price"]`` into a dict, naming the flag on bad input.

    >>> parse_pairs(["title=name"], "--map")
    {'title': 'name'}
    """
    out: dict[str, str] = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ProductVLMError(f"{flag} {item!r}: expected KEY=VALUE, e.g. title=name")
        out[key.strip()] = value.strip()
    return out


def save_config(cfg: StageConfig, out_dir: str | Path, name: str = CONFIG_FILENAME) -> Path:
    """Write the resolved config as YAML into ``out_dir`` and return the path.

    >>> save_config(cfg, "runs/demo")  # doctest: +SKIP
    PosixPath('runs/demo/config.yaml')
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    # through JSON so Paths, enums and tuples become plain YAML scalars and lists
    plain = json.loads(cfg.model_dump_json())
    path.write_text(yaml.safe_dump(plain, sort_keys=False))
    return path


def load_saved_config(cls: type[C], out_dir: str | Path, name: str = CONFIG_FILENAME) -> C:
    """Read back a config written by :func:`save_config` (e.g. to resume a run)."""
    return resolve_config(cls, Path(out_dir) / name)
