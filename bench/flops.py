"""Model FLOPs of one LoRA training step of Phi-3-vision, for MFU (bench/gpu_check.py).

Counted as the model does the work (a matmul of m x k by k x n is 2mkn), frozen base:
  decoder    4 * T * N_dec: forward (2TN) + gradients w.r.t. activations (2TN); no weight
             gradients, as the base is frozen; layer 0's qkv_proj needs none either (its input,
             the frozen embeddings, takes no gradient), so 2 * T * qkv is taken off once.
  LoRA       6 * T * N_lora: forward, and gradients w.r.t. both its weights and its input.
  attention  12 * d * sum(l^2) per layer: QK^T and AV over the whole l x l square (as SDPA's
             math path and PaLM's MFU count it; causal kernels skip half), forward + 2x back.
  lm_head    4 * A * d * V: only at the A positions that predict an answer token.
  vision     forward only (frozen tower and projection): per encoded crop of t = 577 tokens,
             each CLIP layer that runs costs 2t(4w^2 + 2wI) + 4t^2 w; the patch embedding
             2(t-1) * 3p^2 w; the projection 2 * T_img * (4w' d + d^2).
T: tokens of the batch (attention mask), l: each row's length, N_dec: the decoder's matmul
weights (qkv, o, gate_up, down), N_lora: LoRA parameters, T_img: image positions, A: answer
positions. Gradient checkpointing's recomputed forward is not counted, nor is padding: MFU,
not HFU.
"""

from __future__ import annotations

from typing import Any


def lora_step_flops(config: Any, batch: dict[str, Any], lora_params: int,
                    count_padding: bool = False) -> float:
    """FLOPs of forward + backward of ``batch`` (a VLMCollator output) as above.

    Padding is not model work (MFU counts what the model needs); ``count_padding`` counts
    every row at the padded length, as a framework runs it (to check against its count).
    """
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, kv, inter = config.num_attention_heads, config.num_key_value_heads, \
        config.intermediate_size
    head_dim = d // heads
    qkv = d * (heads + 2 * kv) * head_dim
    per_layer = qkv + heads * head_dim * d + d * 2 * inter + inter * d
    mask = batch["attention_mask"]
    lengths = [mask.shape[1] if count_padding else int(n) for n in mask.sum(dim=1)]
    tokens = sum(lengths)
    answers = int((batch["labels"][:, 1:] != -100).sum())
    flops = 4.0 * tokens * per_layer * layers - 2.0 * tokens * qkv
    flops += 6.0 * tokens * lora_params
    flops += 12.0 * d * sum(n * n for n in lengths) * layers
    flops += 4.0 * answers * d * vocab
    return flops + vision_forward_flops(config, batch)


def vision_forward_flops(config: Any, batch: dict[str, Any]) -> float:
    """The image side's forward: the CLIP layers that run, on the crops encoded, + projection."""
    vision = config.vision_config
    w, inter, patch = vision.hidden_size, vision.intermediate_size, vision.patch_size
    t = (vision.image_size // patch) ** 2 + 1
    depth = vision.num_hidden_layers
    used = config.feature_layer if config.feature_layer >= 0 else depth + 1 + config.feature_layer
    crops = 0
    for height, width in batch["image_sizes"].reshape(-1, 2).tolist():
        grid = (height // vision.image_size) * (width // vision.image_size)
        crops += 1 if grid == 1 else 1 + grid  # a one-crop photo's global view is encoded once
    per_crop = used * (2 * t * (4 * w * w + 2 * w * inter) + 4 * t * t * w)
    per_crop += 2 * (t - 1) * 3 * patch * patch * w
    image_tokens = int((batch["input_ids"] < 0).sum())
    dim = 4 * config.image_dim_out
    d = config.hidden_size
    return float(crops * per_crop + 2 * image_tokens * (dim * d + d * d))
