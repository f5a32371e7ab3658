"""The check phase of bench_fullsize.py and its figures: merged/ against the Hub's layout and
against base + adapter, and the configs' memory comments beside what was measured.

Not run on its own: bench_fullsize.py runs ``phase_check`` in a process of its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
from pathlib import Path
from typing import Any

GB = 1e9
TARGET = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.(qkv_proj|o_proj|gate_up_proj|down_proj)"
                    r"\.weight")
STRONG_B_STD = 0.005  # a LoRA B of a trained size (thousands of steps), not of 2 steps


def lora_parameter_count(base: Path, r: int) -> int:
    """r * (fan_in + fan_out) for each LoRA-wrapped decoder matrix, from the config."""
    from productvlm.models.phi3v import Phi3VConfig
    from productvlm.models.phi3v.hub_layout import hub_tensor_shapes

    shapes = hub_tensor_shapes(Phi3VConfig.from_pretrained(base))
    return sum(r * (out + inp) for name, (out, inp) in
               ((n, s) for n, s in shapes.items() if TARGET.fullmatch(n)))


def nf4_weights_gb(base: Path) -> float:
    """QLoRA's weights: NF4 decoder matrices (4 bits + double-quantised absmax, blocks of 64)
    and everything else in bf16 (the vision side and lm_head are skipped, as loading.py does)."""
    from productvlm.models.phi3v import Phi3VConfig
    from productvlm.models.phi3v.hub_layout import hub_tensor_shapes, parameter_count

    shapes = hub_tensor_shapes(Phi3VConfig.from_pretrained(base), wte_copy=False)
    quantised = parameter_count({n: s for n, s in shapes.items() if TARGET.fullmatch(n)})
    rest = parameter_count(shapes) - quantised
    per_param = 0.5 + 1 / 64 + 4 / (64 * 256)  # nibble + uint8 absmax + fp32 per 256 absmax
    return (quantised * per_param + 2 * rest) / GB


def _tensors(folder: Path) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return dict.fromkeys(f.keys(), folder / "model.safetensors")  # noqa: SIM118


def compare_weights(base: Path, merged: Path) -> tuple[list[str], int, int]:
    """(frozen tensors that changed, LoRA targets that changed, LoRA targets), one tensor at
    a time from the safetensors files (memory stays flat)."""
    import torch
    from safetensors import safe_open

    a, b = _tensors(base), _tensors(merged)
    frozen_changed, targets, changed = [], 0, 0
    for name in sorted(a):
        with safe_open(str(a[name]), "pt") as fa, safe_open(str(b[name]), "pt") as fb:
            same = torch.equal(fa.get_tensor(name), fb.get_tensor(name))
        if TARGET.fullmatch(name):
            targets += 1
            changed += not same
        elif not same:
            frozen_changed.append(name)
    return frozen_changed, changed, targets


def merge_matches_weights(base: Path, merged: Path, adapter: Path) -> tuple[int, int, float]:
    """(matrices equal to bf16(W + alpha/r * B @ A), matrices checked, largest difference in
    units of the bf16 spacing at that weight): the merge, checked weight by weight."""
    import torch
    from safetensors import safe_open

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scaling = cfg["lora_alpha"] / cfg["r"]
    a, b = _tensors(base), _tensors(merged)
    ok = checked = 0
    worst = 0.0
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as lora:
        for name in sorted(n for n in a if TARGET.fullmatch(n)):
            key = "base_model.model." + name.removesuffix(".weight")
            with safe_open(str(a[name]), "pt") as fa, safe_open(str(b[name]), "pt") as fb:
                w, got = fa.get_tensor(name).float(), fb.get_tensor(name).float()
            delta = scaling * (lora.get_tensor(key + ".lora_B.weight").float()
                               @ lora.get_tensor(key + ".lora_A.weight").float())
            expected = (w + delta).to(torch.bfloat16).float()
            spacing = expected.abs().clamp(min=1e-30) * 2.0**-7  # bf16: 8 significant bits
            gap = float(((got - expected).abs() / spacing).max())
            worst, checked = max(worst, gap), checked + 1
            ok += gap <= 1.0
    return ok, checked, worst


def phase_check(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from safetensors import safe_open

    from productvlm.models.loading import load_model
    from productvlm.models.merged import save_merged
    from productvlm.models.phi3v import Phi3VConfig
    from productvlm.models.phi3v.hub_layout import compare_layout, hub_tensor_shapes, read_layout
    from productvlm.models.processors import load_processor
    from productvlm.prepared import load_prepared
    from productvlm.training.collate import VLMCollator

    base, run = work / "base", work / f"run{args.crops[0]}"
    merged = run / "merged"
    found, problems = read_layout(merged)
    problems += compare_layout(found, hub_tensor_shapes(Phi3VConfig.from_pretrained(base)))
    shards = sorted(p.name for p in merged.glob("*.safetensors"))
    print(f"merged/: {len(found)} tensors in {shards} + index: "
          f"{problems if problems else 'the Hub layout'}")
    frozen_changed, moved, targets = compare_weights(base, merged)
    with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as f:
        bs = [f.get_tensor(k) for k in f.keys() if "lora_B" in k]  # noqa: SIM118
    b_max = max(float(b.abs().max()) for b in bs)
    b_nonzero = sum(int((b != 0).sum()) for b in bs) / sum(b.numel() for b in bs)
    exact, checked, worst = merge_matches_weights(base, merged, run / "adapter")
    print(f"merged/ LoRA targets equal to bf16(W + alpha/r * B @ A) within one bf16 step: "
          f"{exact} of {checked} (largest gap {worst:.2f} steps)")
    print(f"frozen tensors changed: {len(frozen_changed)}; LoRA-target matrices changed by the "
          f"merge: {moved} of {targets}; LoRA B moved off zero: "
          f"{b_nonzero:.0%} of entries, max |B| {b_max:.2e}")

    processor = load_processor(run / "processor", num_crops=args.crops[0])
    row = load_prepared(work / "prepared")["train"][0]
    batch = VLMCollator(processor, max_length=4096)([row])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)

    def logits(model: Any) -> torch.Tensor:
        with torch.inference_mode():
            return model(**inputs).logits[0].float()

    peft = PeftModel.from_pretrained(load_model(base, dtype="bf16"), run / "adapter").eval()
    with_adapter = logits(peft)
    with peft.disable_adapter():
        plain = logits(peft)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * STRONG_B_STD)
    strong = logits(peft)
    save_merged(peft, processor, work / "strong-merged", base=base)
    del peft
    gc.collect()
    reloaded = {}
    for name, folder in (("run", merged), ("strong", work / "strong-merged")):
        model = load_model(folder, dtype="bf16")
        reloaded[name] = logits(model)
        del model
        gc.collect()

    def gap(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x - y).abs().max())

    figures = {
        "merged_vs_adapter": gap(reloaded["run"], with_adapter),
        "adapter_vs_base": gap(with_adapter, plain),
        "strong_merged_vs_adapter": gap(reloaded["strong"], strong),
        "strong_adapter_vs_base": gap(strong, plain),
        "logit_scale": float(plain.abs().max()),
    }
    print("max |logit difference| over {} positions: merged/ vs base + adapter {:.3f} "
          "(adapter vs base {:.3f}); with B ~ N(0, {}): merged vs base + adapter {:.3f}, "
          "adapter vs base {:.3f}; logits up to {:.1f}".format(
              inputs["input_ids"].shape[1], figures["merged_vs_adapter"],
              figures["adapter_vs_base"], STRONG_B_STD, figures["strong_merged_vs_adapter"],
              figures["strong_adapter_vs_base"], figures["logit_scale"]))
    assert not problems and not frozen_changed and b_nonzero > 0.5 and exact == checked
    assert figures["strong_merged_vs_adapter"] < 0.25 * figures["strong_adapter_vs_base"]
    return {**figures, "tensors": len(found), "shards": shards, "frozen_changed":
            len(frozen_changed), "targets_changed": moved, "targets": targets,
            "merge_exact": exact, "merge_worst_steps": worst,
            "b_nonzero": b_nonzero, "b_max": b_max, "rss_gb": _rss()}


def _rss() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def config_memory_lines(read: dict[str, dict[str, Any]], crops: list[int],
                        configs: list[Path]) -> list[str]:
    """What this run measured, then the memory comments of the shipped configs, verbatim."""
    lines = ["", "=== measured here (CPU, bf16) ==="]
    build = read.get("build", {})
    weights = build.get("weights_gb", 8.29)
    extra = None
    for c in crops:
        if f"train{c}" in read:
            r = read[f"train{c}"]
            steady = r["s_per_step"][1:] or r["s_per_step"]
            stages = r.get("rss_by_stage_gb", {})
            step_peak = max(stages.get("training step", 0), stages.get("between steps", 0))
            in_steps = f", {step_peak:.1f} GB in the training steps" if step_peak else ""
            lines.append(f"LoRA r=64, batch {r['batch']}, num_crops {c}: peak RSS "
                         f"{r['rss_gb']:.1f} GB over the whole run{in_steps} (bf16 weights "
                         f"{weights:.1f} GB), {sum(steady) / len(steady):.0f} s/step")
            if extra is None:
                extra = (step_peak or r["rss_gb"]) - weights
    if "nf4_gb" in build and extra is not None:
        lines.append(f"QLoRA (not runnable here): NF4 weights {build['nf4_gb']:.2f} GB computed "
                     f"from the tensor list, + the {extra:.1f} GB beyond the weights measured at "
                     f"num_crops {crops[0]} = {build['nf4_gb'] + extra:.1f} GB")
    for path in configs:
        lines += ["", f"--- {path.name} says:"]
        comment = [x for x in path.read_text().splitlines() if x.startswith("#")]
        at = next((i for i, x in enumerate(comment) if "emory" in x), len(comment))
        lines += comment[at:]
    return lines
