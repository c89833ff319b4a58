"""The Qwen2-VL model the trainer and streaming inference run, and the loss on the packer's labels.

`load_model("tiny-qwen2-vl")` builds the randomly initialised model of `training/models/tiny-qwen2-vl.json`
(Qwen2-VL's vocabulary and special token ids, ~10M parameters, seeded), so the whole path runs on a CPU in
a minute; any other name is a model folder or a hub id in the local cache (`Qwen/Qwen2-VL-7B-Instruct`).

`lm_loss_sum` is the summed next-token cross-entropy over the label positions only: the LM head runs on
the hidden states of those positions instead of every position, which on a 151,936-row vocabulary is
most of a step's memory (the assistant words are a small share of a clip's tokens; the video is most).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY = "tiny-qwen2-vl"
TINY_CONFIG = Path(__file__).parent / "models" / f"{TINY}.json"
IGNORE = -100
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve(device: str, dtype: str, attention: str) -> tuple[str, str]:
    """`auto` settings for a device: bfloat16 and FlashAttention 2 on GPUs that have them (the
    `flash_attn` package installed), float32 and PyTorch's SDPA otherwise."""
    import importlib.util

    import torch

    gpu = device == "cuda" and torch.cuda.is_available()
    if dtype == "auto":
        dtype = "bfloat16" if gpu and torch.cuda.is_bf16_supported() else "float32"
    if attention == "auto":
        flash = gpu and importlib.util.find_spec("flash_attn") is not None and dtype in ("bfloat16", "float16")
        attention = "flash_attention_2" if flash else "sdpa"
    return dtype, attention


def load_model(name: str, dtype: str = "float32", attention: str = "sdpa", seed: int = 0,
               device: str = "cpu") -> Any:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    if attention not in ATTENTION or dtype not in DTYPES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)} and dtype one of {', '.join(DTYPES)}")
    dtype, attention = resolve(device, dtype, attention)
    torch_dtype = getattr(torch, dtype)
    if name == TINY:
        values = json.loads(TINY_CONFIG.read_text())
        values.pop("_comment", None)
        config = Qwen2VLConfig(**values)
        config._attn_implementation = attention
        torch.manual_seed(seed)
        return Qwen2VLForConditionalGeneration(config).to(torch_dtype)
    return Qwen2VLForConditionalGeneration.from_pretrained(name, dtype=torch_dtype, attn_implementation=attention)


def model_inputs(batch: dict, video_token_id: int, device: Any = "cpu") -> dict:
    """The model's keyword arguments for a collated batch (training.batches.collate), on `device`:
    the token type ids Qwen2-VL's multimodal RoPE needs (2 on video tokens)."""
    ids = batch["input_ids"].to(device)
    return {"input_ids": ids, "attention_mask": batch["attention_mask"].to(device),
            "pixel_values_videos": batch["pixel_values_videos"].to(device),
            "video_grid_thw": batch["video_grid_thw"].to(device),
            "mm_token_type_ids": (ids == video_token_id).int() * 2}


def loss_model(model: Any) -> Any:
    """`model` wrapped so that calling it with a collated batch returns (summed cross-entropy of the
    labelled next tokens, their count as a tensor): the module DDP/FSDP wrap, so their hooks run."""
    import torch
    import torch.nn.functional as F

    class LmLoss(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, batch: dict) -> tuple[Any, Any]:
            device = self.inner.lm_head.weight.device
            inputs = model_inputs(batch, self.inner.config.video_token_id, device)
            hidden = self.inner.model(**inputs, use_cache=False).last_hidden_state
            targets = batch["labels"].to(device)[:, 1:]
            keep = targets != IGNORE
            logits = self.inner.lm_head(hidden[:, :-1][keep]).float()
            return F.cross_entropy(logits, targets[keep], reduction="sum"), keep.sum()

    return LmLoss(model)
