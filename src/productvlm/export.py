"""`productvlm export --for vllm RUN`: the folder vLLM loads for a run, and the lines that
serve it.

OUT (default ``RUN/vllm``) holds what vLLM loads, as :func:`plan_source` decides it:

* a LoRA run that vLLM serves as an adapter: ``adapter/`` (the run's adapter, its rank within
  vLLM's ``max_lora_rank`` sizes, nothing but LoRA weights in it) on the base model it names;
* otherwise ``model/``: merged/'s files (hard links where the file system allows, else
  copies), with the processor parts vLLM asks for and merged/ may lack (a Qwen folder's video
  processor, saved where torchvision was missing: :func:`complete_processor`);

and ``vllm.json``: what a client of ``vllm serve`` sends to get productvlm's answers (the
prompt, the answer format as a regex for ``structured_outputs``, the stop token, greedy
sampling, the adapter's name), beside the ``vllm serve`` and ``LLM(...)`` lines it prints.

>>> export_for_vllm(Path("runs/qwen/train"))  # doctest: +SKIP
PosixPath('runs/qwen/train/vllm')
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import typer

from productvlm.errors import ProductVLMError
from productvlm.inference.vllm_engine import Source, plan_source
from productvlm.rundir import RunDir, resolve_model

#: the name the adapter is served under (``--lora-modules NAME=PATH``; the API's "model")
ADAPTER_NAME = "productvlm"


def export_for_vllm(run: Path, out: Path | None = None) -> Path:
    """Write ``out`` (default ``run/vllm``) for vLLM and return it; prints how to serve it."""
    if not (Path(run) / "config.yaml").is_file():
        raise ProductVLMError(f"{run}: not a run directory (no config.yaml); export takes "
                              "what `productvlm train` wrote")
    info = resolve_model(run)
    source = plan_source(info)
    out = Path(out) if out else RunDir(Path(run)).root / "vllm"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if source.adapter:
        folder = _copy_adapter(Path(source.adapter), out / "adapter")
        served = Source(source.model, str(folder), source.rank, source.why)
    else:
        from productvlm.models.merged import complete_processor

        _link_tree(Path(source.model), out / "model")
        added = complete_processor(out / "model")
        served = Source(str(out / "model"), None, 0,
                        source.why + (f"; added {', '.join(added)}" if added else ""))
    plan = request_plan(info, served)
    (out / "vllm.json").write_text(json.dumps(plan, indent=2, ensure_ascii=False) + "\n")
    typer.echo(f"{out}: {served.why}")
    typer.echo(f"serve it:  {plan['serve']}")
    typer.echo(f"in Python: {plan['python']}")
    typer.echo(f"requests:  {out / 'vllm.json'} (prompt, answer regex, stop token)")
    return out


def request_plan(info: Any, source: Source) -> dict[str, Any]:
    """The serve line, the LLM(...) line and what each request carries."""
    from productvlm.constrained import template_regex
    from productvlm.inference.predictor import answer_format
    from productvlm.inference.record import MAX_NEW_TOKENS
    from productvlm.inference.vllm_engine import engine_args, image_kwargs
    from productvlm.models.processors import load_processor
    from productvlm.prompts import render_prompt, stop_token_ids

    processor = load_processor(info.processor, num_crops=info.num_crops)
    answer = answer_format(info.target_format, info.categories, info.title_alphabet,
                           info.title_max_chars, info.schema, info.domains)
    args = engine_args(source, dtype="auto", num_crops=image_kwargs(source, info.num_crops))
    serve = ["vllm", "serve", args.pop("model")]
    flags = {"enable_lora": "--enable-lora", "max_lora_rank": "--max-lora-rank",
             "max_loras": "--max-loras", "trust_remote_code": "--trust-remote-code",
             "limit_mm_per_prompt": "--limit-mm-per-prompt",
             "mm_processor_kwargs": "--mm-processor-kwargs", "dtype": "--dtype",
             "enable_prefix_caching": "--enable-prefix-caching"}
    for key, value in args.items():
        if value is True:
            serve.append(flags[key])
        elif isinstance(value, dict):
            serve += [flags[key], json.dumps(value)]
        elif value is not False:
            serve += [flags[key], str(value)]
    if source.adapter:
        serve += ["--lora-modules", f"{ADAPTER_NAME}={source.adapter}"]
    python = (f"LLM({', '.join(f'{k}={v!r}' for k, v in [('model', source.model), *args.items()])})"
              + (f"; LoRARequest({ADAPTER_NAME!r}, 1, {source.adapter!r})"
                 if source.adapter else ""))
    return {"serve": " ".join(shlex.quote(w) for w in serve), "python": python,
            "model": ADAPTER_NAME if source.adapter else source.model,
            "prompt": render_prompt(processor.tokenizer, info.question),
            "structured_outputs": {"regex": template_regex(answer)},
            "stop_token_ids": stop_token_ids(processor.tokenizer),
            "sampling": {"temperature": 0.0, "max_tokens": MAX_NEW_TOKENS,
                         "skip_special_tokens": False},
            "target_format": info.target_format, "why": source.why}


def _copy_adapter(src: Path, dst: Path) -> Path:
    """The adapter's config and weights, checked against what vLLM's LoRA takes."""
    from productvlm.inference.vllm_engine import lora_rank

    cfg = json.loads((src / "adapter_config.json").read_text())
    lora_rank(int(cfg.get("r") or 0))  # a rank vLLM cannot serve is a one-line error here
    if cfg.get("modules_to_save"):
        raise ProductVLMError(f"{src}: the adapter saves whole modules "
                              f"({cfg['modules_to_save']}), which vLLM's LoRA does not load; "
                              "serve merged/")
    dst.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (src / name).is_file():
            raise ProductVLMError(f"{src}: no {name}")
        shutil.copy2(src / name, dst / name)
    return dst


def _link_tree(src: Path, dst: Path) -> None:
    """``src``'s files in ``dst``: the weights hard-linked (no second copy; else copied), the
    rest copied (the export may complete them without touching ``src``)."""
    def link(a: str, b: str) -> None:
        try:
            if not a.endswith((".safetensors", ".bin")):
                raise OSError("a small file: copied")
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def register(app: typer.Typer) -> None:
    """Add the `export` command."""

    @app.command("export")
    def export_command(
        run: Path = typer.Argument(..., help="run directory (from productvlm train)"),
        to: str = typer.Option("vllm", "--for", help="what to export for: vllm"),
        out: Path | None = typer.Option(None, "--out", "-o", help="folder [RUN/vllm]"),
    ) -> None:
        """Write the folder vLLM loads for a run and print the line that serves it."""
        if to != "vllm":
            raise ProductVLMError(f"--for {to}: export knows vllm only")
        export_for_vllm(run, out)


__all__ = ["ADAPTER_NAME", "export_for_vllm", "register", "request_plan"]
