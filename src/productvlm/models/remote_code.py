"""Carry a base model's remote code into a saved model, so that merged/ is a drop-in for it.

productvlm never runs remote code, but other tools load Phi-3-vision through the repo's own
files: vLLM's processor path and ``AutoModelForCausalLM`` / ``AutoProcessor`` with
``trust_remote_code=True`` follow the ``auto_map`` entries of config.json,
preprocessor_config.json, tokenizer_config.json and processor_config.json to ``*.py`` files
beside them. When the base model has such files, :func:`carry_remote_code` copies them (and
the modules they import relatively) and merges those ``auto_map`` entries into the saved
folder's files of the same names.

The files come from the base model's own folder, or for a Hub id from huggingface_hub's cache
(a download only where they are not cached and the Hub may be reached), never from this
project's tree. An entry whose code cannot be found is left out, with a warning: an
``auto_map`` pointing at a missing file breaks loaders that a plain folder would not.

>>> carry_remote_code("microsoft/Phi-3-vision-128k-instruct", Path("runs/lora/merged"))
... # doctest: +SKIP
['configuration_phi3_v.py', 'image_embedding_phi3_v.py', 'modeling_phi3_v.py', ...]
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

AUTO_MAP_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json",
                  "processor_config.json")
log = logging.getLogger(__name__)

Finder = Callable[[str], Path | None]


def carry_remote_code(base: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Copy ``base``'s auto_map entries and the code they name into ``out``; returns the
    ``*.py`` files copied (none when the base has no auto_map)."""
    find = _finder(str(base))
    out = Path(out)
    copied: set[str] = set()
    for name in AUTO_MAP_FILES:
        source, target = find(name), out / name
        if source is None or not target.is_file():
            continue
        auto_map = json.loads(source.read_text()).get("auto_map")
        if not auto_map:
            continue
        kept = {}
        for cls, ref in auto_map.items():
            modules = {_module_of(r) for r in (ref if isinstance(ref, list) else [ref]) if r}
            files = _copy_modules({m for m in modules if m}, find, out)
            if files is None:
                log.warning("%s: auto_map %s names code that %s does not have; left out",
                            name, cls, base)
                continue
            copied |= files
            kept[cls] = ref
        if kept:
            saved = json.loads(target.read_text())
            saved["auto_map"] = kept
            target.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return sorted(copied)


def _module_of(ref: str) -> str | None:
    """``modeling_phi3_v.Phi3VForCausalLM`` -> ``modeling_phi3_v``; code in another repo
    (``org/repo--module.Class``) needs no file here."""
    return None if "--" in ref else ref.rsplit(".", 1)[0]


def _copy_modules(modules: set[str], find: Finder, out: Path) -> set[str] | None:
    """Copy each module and the modules it imports relatively; None if one is missing."""
    from transformers.dynamic_module_utils import get_relative_imports

    todo, done = list(modules), set()
    while todo:
        module = todo.pop()
        filename = module.replace(".", "/") + ".py"
        if filename in done:
            continue
        source = find(filename)
        if source is None:
            return None
        target = out / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        done.add(filename)
        todo += get_relative_imports(source)
    return done


def _finder(base: str) -> Finder:
    """name -> path of that file of the base model (its folder, or the Hub cache), or None."""
    folder = Path(base).expanduser()
    if folder.is_dir():
        adapter = folder / "adapter_config.json"
        if adapter.is_file():  # an adapter folder: the code is its base model's
            named = json.loads(adapter.read_text()).get("base_model_name_or_path")
            return _finder(named) if named else (lambda name: None)
        return lambda name: folder / name if (folder / name).is_file() else None
    return lambda name: _from_hub(base, name)


def _from_hub(repo_id: str, name: str) -> Path | None:
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import HfHubHTTPError

    cached: Any = try_to_load_from_cache(repo_id, name)
    if isinstance(cached, str):
        return Path(cached)
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() in (
        "1", "true", "yes", "on")
    if cached is not None or offline:
        return None  # known to be absent from the repo, or the Hub is off limits
    try:
        return Path(hf_hub_download(repo_id, name))
    except (HfHubHTTPError, OSError, ValueError):
        return None


__all__ = ["AUTO_MAP_FILES", "carry_remote_code"]
