"""Qwen2-VL "is this a talking head?" scores (LIVECC_SPEC section 6, A3) through transformers.

The model sees one video of N frames (8, 320x180) and the question; the score is the probability of the
"Yes" token as the next token after the assistant turn opens: softmax over the model's whole output
vocabulary (all `lm_head` rows) at the last prompt position, in float32.

"Yes" is tokenised with the model's own tokenizer, no special tokens, no leading space (the answer starts
right after "<|im_start|>assistant\\n"); it must be exactly one token (checked at load, ValueError
otherwise). In Qwen2's byte-level BPE vocabulary "Yes" is a single token.

The inputs are built here, not by the transformers processor: its Qwen2-VL *video* processor needs
torchvision, which cannot be imported with the CPU torch of this project (DESIGN.md). What it builds is
what the processor and Qwen2-VL's chat template give for a user message [video, text]:
- prompt: "<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<|vision_start|>"
  + "<|video_pad|>" * (grid_t * grid_h * grid_w / merge**2) + "<|vision_end|>" + question
  + "<|im_end|>\\n<|im_start|>assistant\\n";
- pixels: each frame resized (PIL bicubic) to `smart_resize` of its size (multiples of 28: 320x180 ->
  308x168), scaled to [0, 1], normalised with the image processor's mean/std, frames padded to an even
  count with the last frame, cut into 2-frame temporal patches of 14x14 in the 2x2-merge order of
  `Qwen2VLVideoProcessor.patchify`: 8 frames of 320x180 -> video_grid_thw (4, 12, 22), 1056 patches of
  3*2*14*14 = 1176 values, 264 video tokens;
- mm_token_type_ids (2 on video tokens) for the multimodal RoPE.
The processor constants (mean, std, patch, temporal patch, merge, min/max pixels) come from the model's
preprocessor_config.json (Qwen2VLImageProcessorPil, which needs no torchvision) when it has one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUESTION = ("Here are {frames} evenly sampled frames from a YouTube video. Are there someone always showing "
            "their faces and talking? Answer Yes or No.")
SYSTEM = "You are a helpful assistant."
INSTALL = "pip install torch==2.13.0 transformers==5.23.0 (the project's `vlm` extra)"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class VisionParams:
    """Qwen2-VL image/video processor constants (defaults: Qwen2-VL-2B-Instruct's)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_pretrained(cls, model: str) -> "VisionParams":
        """From the model's preprocessor_config.json; the defaults when it has none."""
        try:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            proc = Qwen2VLImageProcessorPil.from_pretrained(model)
        except (OSError, ValueError):
            return cls()
        size = getattr(proc, "size", None) or {}
        get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
        return cls(patch_size=int(proc.patch_size), temporal_patch_size=int(proc.temporal_patch_size),
                   merge_size=int(proc.merge_size), min_pixels=int(get("shortest_edge") or cls.min_pixels),
                   max_pixels=int(get("longest_edge") or cls.max_pixels),
                   mean=tuple(float(v) for v in proc.image_mean), std=tuple(float(v) for v in proc.image_std))


def video_patches(frames: list[np.ndarray], params: VisionParams) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Frames (uint8 H x W x 3, all one size) -> (patches (grid_t*grid_h*grid_w, C*T*P*P) float32,
    (grid_t, grid_h, grid_w)), the layout of Qwen2VLVideoProcessor.patchify."""
    from training.vision import normalise, patchify, resize_frames, smart_resize

    if not frames:
        raise ValueError("no frames")
    h, w = frames[0].shape[:2]
    if any(f.shape != (h, w, 3) or f.dtype != np.uint8 for f in frames):
        raise ValueError("frames must be uint8 RGB arrays of one size")
    p, tp, m = params.patch_size, params.temporal_patch_size, params.merge_size
    video = resize_frames(frames, smart_resize(h, w, p * m, params.min_pixels, params.max_pixels))
    if pad := -len(video) % tp:
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
    patches, grid = patchify(video, p, m, tp)
    return normalise(patches, params.mean, params.std), tuple(grid)


def prompt_text(question: str, video_tokens: int) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
            + "<|video_pad|>" * video_tokens
            + f"<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")


class QwenVLYesScorer:
    """Loads a Qwen2-VL checkpoint (hub id or folder) once; `yes_probs(videos)` for a batch of clips."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto", question: str = QUESTION,
                 yes_token: str = "Yes", threads: int = 1) -> None:
        try:
            import torch
            from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
        except ImportError as exc:
            raise ValueError(f"the vlm backend needs torch and transformers ({exc}): {INSTALL}") from None
        self.torch = torch
        if device == "cpu":
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        self.question = question
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(
            model, dtype=self.dtype, attn_implementation="sdpa").to(self.device).eval()
        self.params = VisionParams.from_pretrained(model)
        vision = self.model.config.vision_config
        if (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size) != (
                self.params.patch_size, self.params.temporal_patch_size, self.params.merge_size):
            raise ValueError("the model's vision config and its preprocessor config disagree on patch sizes")
        ids = self.tokenizer.encode(yes_token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{yes_token!r} is {len(ids)} tokens for this tokenizer ({ids}); the score needs one")
        self.yes_id = ids[0]
        self.video_token_id = int(self.model.config.video_token_id)
        pad = self.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        if pad != self.video_token_id:
            raise ValueError(f"tokenizer's <|video_pad|> id {pad} != the model's video_token_id "
                             f"{self.video_token_id}")
        self._prompt_cache: dict[int, list[int]] = {}

    def prompt_ids(self, video_tokens: int) -> list[int]:
        """Token ids of the prompt (tokenised with one <|video_pad|>, then expanded: same ids, faster)."""
        if video_tokens not in self._prompt_cache:
            ids = self.tokenizer.encode(prompt_text(self.question, 1), add_special_tokens=False)
            if ids.count(self.video_token_id) != 1:
                raise ValueError("the tokenizer does not keep <|video_pad|> as one special token")
            k = ids.index(self.video_token_id)
            self._prompt_cache[video_tokens] = ids[:k] + [self.video_token_id] * video_tokens + ids[k + 1:]
        return self._prompt_cache[video_tokens]

    def build_inputs(self, videos: list[list[np.ndarray]]) -> dict:
        torch = self.torch
        patches, grids, ids = [], [], []
        merge = self.params.merge_size ** 2
        for frames in videos:
            pv, grid = video_patches(frames, self.params)
            patches.append(pv)
            grids.append(grid)
            ids.append(self.prompt_ids(grid[0] * grid[1] * grid[2] // merge))
        width = max(len(x) for x in ids)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for k, x in enumerate(ids):  # left padding: the next-token position is the last one for every row
            input_ids[k, width - len(x):] = torch.tensor(x)
            attention[k, width - len(x):] = 1
        types = (input_ids == self.video_token_id).to(torch.int32) * 2
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention.to(self.device),
            "mm_token_type_ids": types.to(self.device),
            "pixel_values_videos": torch.from_numpy(np.concatenate(patches)).to(self.device, self.dtype),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long, device=self.device),
        }

    def yes_probs(self, videos: list[list[np.ndarray]]) -> list[float]:
        torch = self.torch
        inputs = self.build_inputs(videos)
        with torch.inference_mode():
            out = self.model(**inputs, use_cache=False, logits_to_keep=1)
        probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1)[:, self.yes_id]
        return [float(v) for v in probs.cpu()]
