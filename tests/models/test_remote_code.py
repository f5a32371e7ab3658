"""merged/ carries the base model's remote code and auto_map entries (from its folder or the
Hub cache, never from the project), so loaders that run the repo's own code can use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from productvlm.models.loading import LoraSpec, load_model
from productvlm.models.merged import save_merged
from productvlm.models.phi3v import Phi3VForCausalLM
from productvlm.models.phi3v.tiny import save_tiny_model
from productvlm.models.processors import load_processor
from productvlm.models.remote_code import carry_remote_code
from productvlm.models.tiny_tokenizer import train_tiny_tokenizer

# Stand-ins for the Hub repo's code: they fail loudly if productvlm ever executes them.
CODE = {
    "configuration_phi3_v.py": "raise RuntimeError('remote code was executed')\n",
    "modeling_phi3_v.py": "from .image_embedding_phi3_v import X  # noqa\nraise RuntimeError()\n",
    "image_embedding_phi3_v.py": "X = 1\n",
    "processing_phi3_v.py": "raise RuntimeError('remote code was executed')\n",
    "unrelated_script.py": "print('not named by auto_map')\n",
}
AUTO_MAPS = {
    "config.json": {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                    "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"},
    "preprocessor_config.json": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor",
                                 "AutoImageProcessor": "processing_phi3_v.Phi3VImageProcessor"},
    "tokenizer_config.json": {"AutoTokenizer": ["processing_phi3_v.Tok", None]},
    "processor_config.json": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"},
}


@pytest.fixture(scope="module")
def plain_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = train_tiny_tokenizer(["Check Cotton Trench Coat", "Medium Lola Bag", "COATS"], 300)
    return save_tiny_model(tmp_path_factory.mktemp("plain") / "base", tokenizer=tok, num_crops=1)


def _with_remote_code(plain: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in plain.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    for name, auto_map in AUTO_MAPS.items():
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, "auto_map": auto_map}))
    for name, code in CODE.items():
        (folder / name).write_text(code)
    return folder


def _lora_merge(base: Path, out: Path) -> tuple[torch.nn.Module, Path]:
    model = load_model(base, dtype="fp32", lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    return save_merged(model, load_processor(base), out, base=base), out


def test_merged_carries_the_base_folders_remote_code(plain_base: Path, tmp_path: Path) -> None:
    base = _with_remote_code(plain_base, tmp_path / "hub-like")
    _, merged = _lora_merge(base, tmp_path / "merged")
    for name in ("configuration_phi3_v.py", "modeling_phi3_v.py", "image_embedding_phi3_v.py",
                 "processing_phi3_v.py"):
        assert (merged / name).read_text() == CODE[name], name
    assert not (merged / "unrelated_script.py").exists()
    for name, auto_map in AUTO_MAPS.items():
        saved = json.loads((merged / name).read_text())
        assert saved["auto_map"] == auto_map, name
    # and it still loads natively, the stand-in code never run
    config = json.loads((merged / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and "vocab_size" in config
    assert type(AutoConfig.from_pretrained(merged, trust_remote_code=False)).__name__ == (
        "Phi3VConfig")
    assert isinstance(AutoModelForCausalLM.from_pretrained(merged), Phi3VForCausalLM)


def test_a_base_without_remote_code_gives_no_auto_map(plain_base: Path, tmp_path: Path) -> None:
    _, merged = _lora_merge(plain_base, tmp_path / "merged")
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json"):
        assert "auto_map" not in json.loads((merged / name).read_text()), name
    assert not list(merged.glob("*.py"))


def test_an_entry_whose_code_is_missing_is_left_out(plain_base: Path, tmp_path: Path) -> None:
    base = _with_remote_code(plain_base, tmp_path / "hub-like")
    (base / "image_embedding_phi3_v.py").unlink()  # modeling_phi3_v imports it
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "preprocessor_config.json").write_text("{}")
    copied = carry_remote_code(base, out)
    assert copied == ["configuration_phi3_v.py", "processing_phi3_v.py"]
    assert json.loads((out / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_phi3_v.Phi3VConfig"}
    assert "auto_map" in json.loads((out / "preprocessor_config.json").read_text())


def test_a_hub_id_takes_the_code_from_the_hub_cache(plain_base: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    repo = cache / "models--acme--phi3v-like"
    snapshot = repo / "snapshots" / "0123abcd"
    _with_remote_code(plain_base, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never a download in tests
    out = tmp_path / "out"
    out.mkdir()
    for name in AUTO_MAPS:
        (out / name).write_text("{}")
    copied = carry_remote_code("acme/phi3v-like", out)
    assert copied == ["configuration_phi3_v.py", "image_embedding_phi3_v.py",
                      "modeling_phi3_v.py", "processing_phi3_v.py"]
    assert json.loads((out / "tokenizer_config.json").read_text())["auto_map"] == (
        AUTO_MAPS["tokenizer_config.json"])
    assert carry_remote_code("acme/not-cached", tmp_path / "out") == []
