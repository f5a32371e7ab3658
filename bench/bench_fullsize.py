"""The real 4.2B Phi-3-vision on CPU: built in bf16, one LoRA step of the shipped config,
generation at 16 crops, merged/ in the Hub's layout and equal to base + adapter.

Usage: .venv/bin/python bench/bench_fullsize.py [--work /tmp/productvlm-fullsize]
           [--crops 4 16] [--phases build data train generate check] [--keep]

Needs ../shared/phi3v-conformance/hub (the Hub's config.json, tokenizer, preprocessor
config), ~35 GB of disk under --work, and ~21 GB of memory (num_crops 16); takes 30-45
minutes on 2 cores. `--phases` / `--train-crops` rerun parts on a kept --work.
Each phase runs in its own process, so each peak RSS (ru_maxrss) is its own:

  build     Phi3VForCausalLM from hub/config.json with random weights, made directly in bf16
            (torch's default dtype set to bf16 while the modules are created: no fp32 copy
            ever exists), saved as base/: the Hub's json and tokenizer files as they are
            (auto_map included) + safetensors shards in the Hub's layout.
  data      2 real-size product photos from `productvlm synth`, through `productvlm prepare`
            (validation: the same 2, as the Trainer evaluates once at the end).
  train     `productvlm train` itself (training.trainer.train) with
            configs/burberry-phi3v-lora.yaml: collator, LoRA r=64 on the decoder, gradient
            checkpointing, frozen tower; overridden: precision bf16 (auto is fp32 on a CPU),
            2 optimizer steps of one batch of 2 photos (grad_accum 1), no tracker, no
            generated answers during evaluation;
            once per --crops value, the first one writing adapter/ and merged/.
  generate  the constrained decoder (inference.Predictor on the run) at num_crops 16.
  check     merged/'s tensor names, shapes, dtypes and index against the list derived from
            the config (models/phi3v/hub_layout.py); frozen tensors bit-identical to base/,
            LoRA B moved off zero, every LoRA-target matrix equal to bf16(W + alpha/r B A);
            merged/ reloaded against base + adapter's logits, and the same with the
            adapter's B set to a trained-size N(0, 0.005) (merged through save_merged).
            A random 32-layer model amplifies bf16 rounding, so logit gaps are loose; the
            weight-by-weight check is exact.
The summary prints each figure, and the configs' memory comments beside what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from fullsize_check import (  # noqa: E402
    config_memory_lines,
    lora_parameter_count,
    nf4_weights_gb,
    phase_check,
)

HUB = ROOT.parent / "shared" / "phi3v-conformance" / "hub"
LORA_CONFIG = ROOT / "configs" / "burberry-phi3v-lora.yaml"
HUB_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json")
GB = 1e9


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # KiB on Linux


def phase_build(work: Path, _: argparse.Namespace) -> dict[str, Any]:
    import torch

    from productvlm.models.merged import HUB_SHARD_SIZE
    from productvlm.models.phi3v import Phi3VConfig, Phi3VForCausalLM
    from productvlm.models.phi3v.hub_layout import (
        WTE_COPY,
        compare_layout,
        hub_tensor_shapes,
        parameter_count,
        read_layout,
    )

    config = Phi3VConfig.from_pretrained(HUB)
    start = time.perf_counter()
    # transformers sets the default dtype to bf16 while the modules are created and initialised
    model = Phi3VForCausalLM._from_config(config, dtype=torch.bfloat16)
    built, rss_built = time.perf_counter() - start, peak_rss_gb()
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    print(f"built {params / 1e9:.3f}B parameters in bf16 in {built:.0f} s: peak RSS "
          f"{rss_built:.2f} GB for {weights / GB:.2f} GB of weights (fp32 would be "
          f"{2 * weights / GB:.2f} GB)")
    base = work / "base"
    state = model.state_dict()
    state[WTE_COPY] = state["model.embed_tokens.weight"].clone()
    start = time.perf_counter()
    model.save_pretrained(base, state_dict=state, max_shard_size=HUB_SHARD_SIZE)
    for name in HUB_FILES:  # the Hub's own files, as they are
        (base / name).write_bytes((HUB / name).read_bytes())
    saved = time.perf_counter() - start
    found, problems = read_layout(base)
    problems += compare_layout(found, hub_tensor_shapes(config))
    assert not problems, problems
    derived = parameter_count(hub_tensor_shapes(config, wte_copy=False))
    assert derived == params, (derived, params)
    print(f"saved base/ in {saved:.0f} s: {len(found)} tensors, Hub layout OK")
    return {"params": params, "weights_gb": weights / GB, "nf4_gb": nf4_weights_gb(base),
            "build_s": built,
            "build_rss_gb": rss_built, "save_s": saved, "rss_gb": peak_rss_gb()}


def phase_data(work: Path, _: argparse.Namespace) -> dict[str, Any]:
    import datasets

    from productvlm.catalog.prepare import prepare
    from productvlm.synth.generate import synth

    cat = synth(work / "catalog", n=2, seed=0, fault_rate=0.0, overwrite=True)
    prepare(str(cat.parquet), work / "prepared-2", preset="burberry", seed=0)
    # both photos in train; validation holds them too: the Trainer evaluates at the end
    train = datasets.load_from_disk(str(work / "prepared-2" / "dataset"))["train"]
    splits = datasets.DatasetDict({"train": train, "validation": train, "test": train})
    splits.save_to_disk(str(work / "prepared" / "dataset"))
    return {"rss_gb": peak_rss_gb()}


def train_config(work: Path, crops: int, merge: bool) -> Any:
    from productvlm.config import resolve_config
    from productvlm.training.config import TrainConfig

    flags = dict(model=str(work / "base"), data=work / "prepared", out=work / f"run{crops}",
                 num_crops=crops, precision="bf16", max_steps=2, grad_accum=1, logging_steps=1,
                 report_to="none", eval_samples=0, merge=merge)
    return resolve_config(TrainConfig, LORA_CONFIG, flags, section="train")


def phase_train(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from safetensors import safe_open

    from productvlm.training.trainer import train

    cfg = train_config(work, args.crops_now, merge=args.crops_now == args.crops[0])
    start = time.perf_counter()
    with RssByStage() as rss:
        result = train(cfg)
    seconds = time.perf_counter() - start
    log = [json.loads(x) for x in (cfg.out / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    per_step = [cfg.batch_size / e["samples_per_second"] for e in steps]
    with safe_open(str(cfg.out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        trainable = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1]
                        for k in f.keys())  # noqa: SIM118
    losses = [e["loss"] for e in steps]
    assert result.global_step == 2 and all(x == x and abs(x) < 1e4 for x in losses), losses
    assert trainable == lora_parameter_count(work / "base", cfg.lora_r)
    expected = lora_parameter_count(work / "base", cfg.lora_r)
    print(f"num_crops {cfg.num_crops}: trainable {trainable:,} (LoRA r={cfg.lora_r} on the "
          f"decoder: {expected:,} expected), "
          f"losses {losses}, s/step {[round(s, 1) for s in per_step]}, peak RSS "
          f"{peak_rss_gb():.2f} GB (by stage, sampled: {rss.summary()}), whole run "
          f"{seconds:.0f} s")
    return {"trainable": trainable, "losses": losses, "s_per_step": per_step,
            "batch": cfg.batch_size, "rss_gb": peak_rss_gb(), "run_s": seconds,
            "rss_by_stage_gb": rss.peaks}


class RssByStage:
    """This process's RSS sampled every 0.1 s, peak per stage of `productvlm train`: loading,
    training steps, the evaluation at the end, writing adapter/ and merged/. The stages are
    told by wrapping Trainer.training_step, Trainer.evaluate and trainer._write_outputs."""

    def __init__(self) -> None:
        self.stage, self.peaks, self._stop = "load", {}, False

    def _staged(self, owner: Any, name: str, stage: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a: Any, **kw: Any) -> Any:
            before, self.stage = self.stage, stage
            try:
                return inner(*a, **kw)
            finally:
                self.stage = before if stage != "training step" else "between steps"

        setattr(owner, name, wrapper)
        self._undo.append((owner, name, inner))

    def __enter__(self) -> RssByStage:
        import threading

        import psutil
        import transformers

        from productvlm.training import trainer

        self._undo: list = []
        self._staged(transformers.Trainer, "training_step", "training step")
        self._staged(transformers.Trainer, "evaluate", "evaluation")
        self._staged(trainer, "_write_outputs", "write outputs")
        proc = psutil.Process()

        def sample() -> None:
            while not self._stop:
                rss = proc.memory_info().rss / GB
                self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), rss)
                time.sleep(0.1)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        self._thread.join()
        for owner, name, inner in self._undo:
            setattr(owner, name, inner)

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.1f} GB" for k, v in self.peaks.items())


def phase_generate(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from productvlm.inference import Predictor
    from productvlm.prepared import load_prepared

    image = load_prepared(work / "prepared")["train"][0]["image"].convert("RGB")
    predictor = Predictor.load(work / f"run{args.crops[0]}", precision="bf16", num_crops=16,
                               batch_size=1, max_new_tokens=args.max_new_tokens)
    ids = predictor.processor(text=["<|user|>\n<|image_1|>\n"], images=[[image]])["input_ids"]
    timings = {}
    for n in (1, args.max_new_tokens):  # prefill + 1 token (free: no answer fits), the answer
        predictor.max_new_tokens, predictor.tokens_generated = n, 0
        predictor.constrained = n > 1
        start = time.perf_counter()
        answer = predictor.generate([image])[0]
        timings[n] = (time.perf_counter() - start, predictor.tokens_generated)
    (first, _), (total, tokens) = timings[1], timings[args.max_new_tokens]
    decode = (tokens - 1) / (total - first) if tokens > 1 else float("nan")
    print(f"generate at num_crops 16 ({ids.shape[1]} prompt tokens): {tokens} tokens in "
          f"{total:.1f} s = {tokens / total:.2f} tokens/s with the prefill ({first:.1f} s), "
          f"{decode:.2f} tokens/s after it; answer {answer!r}")
    return {"prompt_tokens": int(ids.shape[1]), "tokens": tokens, "seconds": total,
            "prefill_s": first, "tokens_per_s": tokens / total, "decode_tokens_per_s": decode,
            "answer": answer, "rss_gb": peak_rss_gb()}


PHASES = {"build": phase_build, "data": phase_data, "train": phase_train,
          "generate": phase_generate, "check": phase_check}


def run_phase(name: str, work: Path, args: argparse.Namespace, crops: int | None = None) -> None:
    """Run one phase in a fresh process (its own peak RSS); its figures land in a JSON file."""
    tag = f"{name}{crops or ''}"
    cmd = [sys.executable, __file__, "--work", str(work), "--phase", name,
           "--crops", *map(str, args.crops), "--max-new-tokens", str(args.max_new_tokens)]
    if crops:
        cmd += ["--crops-now", str(crops)]
    print(f"--- {tag}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads),
                                         "TOKENIZERS_PARALLELISM": "false"})
    result = json.loads((work / f"{tag}.json").read_text())
    result["wall_s"] = time.perf_counter() - start
    (work / f"{tag}.json").write_text(json.dumps(result, indent=1))


def summary(work: Path, args: argparse.Namespace) -> None:
    read = {p.stem: json.loads(p.read_text()) for p in work.glob("*.json")}
    print("\n=== full-size Phi-3-vision on CPU, bf16 (measured here) ===")
    for tag, r in sorted(read.items(), key=lambda kv: kv[1].get("order", 0)):
        print(f"{tag:10s} wall {r.get('wall_s', 0):6.0f} s  peak RSS {r['rss_gb']:6.2f} GB")
    configs = [LORA_CONFIG, LORA_CONFIG.with_name("burberry-phi3v-qlora.yaml")]
    for line in config_memory_lines(read, args.crops, configs):
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/productvlm-fullsize"))
    parser.add_argument("--crops", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    parser.add_argument("--train-crops", type=int, nargs="+",
                        help="rerun the train phase for these only (adapter/ and merged/ come "
                        "from the first of --crops)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints in --work")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--crops-now", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.phase:  # a child: one phase, figures to a JSON file
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        result = PHASES[args.phase](args.work, args)
        tag = f"{args.phase}{args.crops_now or ''}"
        result["order"] = list(PHASES).index(args.phase) * 100 + (args.crops_now or 0)
        (args.work / f"{tag}.json").write_text(json.dumps(result, indent=1))
        return
    if not (HUB / "config.json").is_file():
        sys.exit(f"{HUB}: the conformance kit's hub/ folder is needed (the Hub's config.json)")
    for name in args.phases:
        for crops in (args.train_crops or args.crops) if name == "train" else [None]:
            run_phase(name, args.work, args, crops)
    summary(args.work, args)
    if not args.keep:
        import shutil

        for sub in ("base", "strong-merged", *(f"run{c}" for c in args.crops)):
            shutil.rmtree(args.work / sub, ignore_errors=True)


if __name__ == "__main__":
    main()
