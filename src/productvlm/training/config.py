"""The typed config of `productvlm train`, one docstring per field (litgpt style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from productvlm.answer import TargetFormat
from productvlm.config import HubKernels, StageConfig
from productvlm.prompts import QUESTION

PHI3V_HUB_ID = "microsoft/Phi-3-vision-128k-instruct"

# Keys a resumed run may change without invalidating its checkpoints.
RESUMABLE_CHANGES = frozenset(
    {"resume", "report_to", "wandb_project", "run_name", "log_model", "num_workers", "epochs",
     "max_steps", "eval_steps", "save_steps", "logging_steps", "save_total_limit", "eval_samples",
     "calibrate",
     # how a step is computed, not what it computes
     "gradient_checkpointing", "packing", "attn_implementation", "liger", "device",
     "micro_batch"}
)


class TrainConfig(StageConfig):
    """Everything `productvlm train` needs; saved as config.yaml in the run directory."""

    model: str = Field(PHI3V_HUB_ID, description="Hub id or folder of a model: Phi-3-vision, "
                       "Qwen2.5-VL / Qwen3-VL, SmolVLM or Phi-4-multimodal "
                       "(see models/families.py)")
    data: Path = Field(Path("runs/prepared"), description="output folder of `productvlm prepare`")
    out: Path = Field(Path("runs/train"), description="run directory")
    num_crops: int = Field(16, ge=1, description="Phi-3-vision: max 336-px crops per image")
    min_pixels: int | None = Field(None, ge=1, description="Qwen-VL: least area of a resized "
                                   "photo in pixels (None: the checkpoint's)")
    max_pixels: int | None = Field(None, ge=1, description="Qwen-VL: most area of a resized "
                                   "photo in pixels, hence its image tokens (None: the "
                                   "checkpoint's)")
    image_splitting: bool | None = Field(None, description="SmolVLM: also feed tiles of the "
                                         "photo besides the whole (None: the checkpoint's)")
    image_longest_edge: int | None = Field(None, ge=1, description="SmolVLM: the photo's "
                                           "longest side after resizing (None: the checkpoint's)")
    dynamic_hd: int | None = Field(None, ge=1, description="Phi-4-multimodal: most 448-px "
                                   "crops of a photo (None: the checkpoint's)")
    max_length: int = Field(4096, ge=16, description="max tokens per example, image included")
    target_format: TargetFormat = Field("seed", description="'seed' (cookbook) or 'json'")
    question: str = Field(QUESTION, description="the user turn after the image tag")
    hflip: float = Field(0.0, ge=0, le=1, description="chance of mirroring a training photo")
    shift: float = Field(
        0.0, ge=0, le=0.5, description="largest random move of a training photo (share of side)"
    )

    mode: Literal["lora", "qlora", "full"] = Field("lora", description="what is trained")
    lora_r: int = Field(64, ge=1, description="LoRA rank")
    lora_alpha: int = Field(128, ge=1, description="LoRA scaling numerator")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on LoRA inputs")
    lora_vision: bool = Field(False, description="also put LoRA on the vision tower/projection")
    freeze_vision: bool = Field(True, description="keep the CLIP tower frozen (lora/full)")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="recompute each layer's activations in the backward pass (a third "
        "more compute, far less memory); auto: only where the step's estimated activations do "
        "not fit the device (training/memory.py)")
    packing: bool | Literal["auto"] = Field(
        "auto", description="train on the batch's rows packed into one sequence, without "
        "padding (training/packing.py); auto: with the attention kernels that skip the other "
        "samples' blocks (flash_attention_*, flex_attention)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the GPU has it, else fp32"
    )
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2",
                                 "flash_attention_3"] = Field(
        "sdpa", description="the decoder's attention kernel; flex_attention (torch's, compiled "
        "with Triton on a GPU) and flash_attention_* (the flash-attn package) compute only "
        "each packed sample's own block")
    hub_kernels: HubKernels = False
    liger: bool = Field(False, description="Liger's Triton kernels in the decoder (fused "
                        "RMSNorm, SwiGLU, RoPE, linear cross-entropy): a CUDA GPU and the "
                        "liger-kernel package (models/kernels.py)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where to train: auto (a CUDA GPU where there is one), cpu, cuda "
        "(several GPUs: accelerate launch)")

    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate of the optimizer")
    vision_lr: float | None = Field(
        None, gt=0, description="learning rate of the vision tower and projection; None: the same"
    )
    epochs: float = Field(3.0, gt=0, description="passes over the training split")
    vision_warmup_epochs: float = Field(
        0.0, ge=0, description="first train the image side alone on category + title words "
        "(for a tower that starts from random weights); 0: off"
    )
    vision_warmup_lr: float = Field(1e-3, gt=0, description="learning rate of that warm-up")
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: epochs)")
    batch_size: int = Field(4, ge=1, description="photos a step, per device")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    micro_batch: int | Literal["auto"] = Field(
        "auto", description="photos a forward pass takes; batch_size x grad_accum (the photos "
        "of an optimizer step, per device) is kept and re-split; auto: on a GPU the most of "
        "its divisors that fit the device, printed at start (training/memory.py); on the CPU "
        "batch_size")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of the steps the learning "
                                "rate warms up over")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    lr_scheduler: str = Field("cosine", description="any transformers scheduler name")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    seed: int = Field(42, description="seed of the weights' init, the data order and dropout")

    logging_steps: int = Field(10, ge=1, description="log the loss every N steps")
    eval_steps: int = Field(100, ge=1, description="validation loss + generation sample")
    save_steps: int = Field(100, ge=1, description="checkpoint every N steps")
    save_total_limit: int = Field(3, ge=1, description="checkpoints kept (the best is kept too)")
    eval_samples: int = Field(32, ge=0, description="validation rows answered at each eval")
    num_workers: int = Field(0, ge=0, description="dataloader worker processes")

    report_to: Literal["wandb", "tensorboard", "mlflow", "none"] = Field(
        "wandb", description="where the run is logged")
    wandb_project: str = Field("productvlm", description="W&B project of the run")
    run_name: str | None = Field(None, description="the tracker's run name (default: the "
                                 "tracker's)")
    log_model: bool = Field(False, description="upload the final adapter/model as a W&B artifact")
    merge: bool = Field(True, description="also save a merged Hub-format model (LoRA modes)")
    calibrate: bool = Field(True, description="fit price intervals, category probability and "
                            "confidence on the validation split after training (calibration/)")
    resume: bool = Field(False, description="continue from the last checkpoint in out/")

    def image_options(self) -> Any:
        """The image-size settings, for ``load_processor`` (each family reads its own)."""
        from productvlm.models.processors import ImageOptions

        return ImageOptions(num_crops=self.num_crops, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels, image_splitting=self.image_splitting,
                            longest_edge=self.image_longest_edge, dynamic_hd=self.dynamic_hd)

    @model_validator(mode="after")
    def _micro_batch_divides_the_step(self) -> TrainConfig:
        step = self.batch_size * self.grad_accum
        if isinstance(self.micro_batch, int) and (self.micro_batch < 1 or step % self.micro_batch):
            raise ValueError(f"micro_batch ({self.micro_batch}) must divide batch_size x "
                             f"grad_accum ({step}), the photos of an optimizer step")
        return self

    @model_validator(mode="after")
    def _checkpoints_line_up_with_evaluations(self) -> TrainConfig:
        # the best checkpoint is chosen by validation loss, so every save needs an evaluation
        if self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps ({self.save_steps}) must be a multiple of eval_steps "
                             f"({self.eval_steps}) so the best checkpoint can be kept")
        return self
