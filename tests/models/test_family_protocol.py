"""A family is a package: one object each, one registry line each, and the generic code asks
the object instead of testing which family it holds (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from productvlm.errors import ProductVLMError
from productvlm.models.families import REGISTRY, family_for, family_named
from productvlm.models.family import ImageOptions, ModelFamily
from productvlm.models.tiny_families import VARIANTS

SRC = Path(__file__).resolve().parents[2] / "src" / "productvlm"
#: each family's package (models/<package>/), from the registry
PACKAGES = {type(f).__module__.split(".")[2]: f for f in REGISTRY}
#: the modules that must call the protocol and never test which family they hold
GENERIC = ("training/vision_warmup.py", "measure.py", "models/scoring.py", "models/loading.py",
           "models/merged.py", "models/processors.py", "models/kernels.py",
           "models/tiny_families.py")


def test_the_four_families_are_packages() -> None:
    assert set(PACKAGES) >= {"phi3v", "qwen_vl", "smolvlm", "phi4mm"}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_family_package_exports_its_one_registered_object(package: str) -> None:
    module = importlib.import_module(f"productvlm.models.{package}")
    exported = [v for v in vars(module).values() if isinstance(v, ModelFamily)]
    fam = PACKAGES[package]
    assert exported == [fam] and fam in REGISTRY
    for model_type in fam.model_types:
        assert family_for(model_type) is fam
    for prefix in fam.class_prefixes:
        assert family_named(f"{prefix}Processor") is fam


def test_the_registry_holds_each_model_type_and_option_once() -> None:
    types = [t for f in REGISTRY for t in f.model_types]
    options = [o for f in REGISTRY for o in f.processor_options]
    assert len(types) == len(set(types)) and len(options) == len(set(options))
    assert {f.name for f in REGISTRY} >= {f.name for f in VARIANTS.values()}


def test_another_family_image_setting_names_its_owner() -> None:
    qwen, smol = family_for("qwen2_5_vl"), family_for("idefics3")
    owners = {key: f for f in REGISTRY for key in f.processor_options}
    with pytest.raises(ProductVLMError, match="min_pixels / max_pixels are Qwen-VL settings"):
        smol.apply_image_options(object(), ImageOptions(max_pixels=1), owners)
    with pytest.raises(ProductVLMError, match="dynamic_hd is a Phi-4-multimodal setting"):
        qwen.apply_image_options(object(), ImageOptions(dynamic_hd=2), owners)
    qwen.apply_image_options(object(), ImageOptions(num_crops=4), owners)  # every run has one


@pytest.mark.parametrize("path", GENERIC)
def test_generic_code_never_tests_which_family_it_holds(path: str) -> None:
    tree = ast.parse((SRC / path).read_text())
    names = set(PACKAGES) | {n for f in REGISTRY for n in (f.name, *f.model_types)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not any(node.module.startswith(f"productvlm.models.{p}")
                           for p in PACKAGES), f"{path} imports {node.module}"
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                assert not (isinstance(side, ast.Constant) and side.value in names), (
                    f"{path}:{node.lineno} compares with a family's name")
        if isinstance(node, ast.Attribute):
            assert node.attr != "native", f"{path}:{node.lineno} tests .native"
