"""The packer: Qwen2-VL chat tokens, labels exactly on the assistant turns, one video per step."""
import numpy as np
import pytest

from training import vision
from training.interleave import sample_frames
from training.packer import IGNORE, ChatPieces, pack
from tests.support.tokenizers import tiny_qwen_tokenizer

@pytest.fixture(scope="module", params=["tiny", "qwen"])
def tokenizer(request):
    """A small BPE with the special tokens, and Qwen's real tokenizer (training/tokenizer.py)."""
    if request.param == "tiny":
        return tiny_qwen_tokenizer()
    from training.tokenizer import load_tokenizer

    return load_tokenizer()


def clip(seconds: float = 9.0):
    times = [k / 30 for k in range(int(seconds * 30) + 1)]
    words = [[0.3, 0.8, "the"], [1.0, 1.6, "striker"], [3.2, 3.9, "shoots"], [6.1, 6.6, "and"],
             [8.7, 9.2, "scores"]]
    index = sample_frames(times, 0.0, seconds)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in index]
    return words, frames, [times[i] for i in index]


def test_labels_cover_exactly_the_assistant_turns(tokenizer):
    words, frames, times = clip()
    pieces = ChatPieces(tokenizer)
    out = pack(words, frames, times, pieces, context="Comment on the match as it happens.")
    assert out.input_ids.shape == out.labels.shape
    trained = out.labels != IGNORE
    assert (out.labels[trained] == out.input_ids[trained]).all()
    text = tokenizer.decode(out.input_ids)
    assert text.count("<|im_start|>assistant\n") == len(out.steps)
    assert text.index("Time=0.0-3.0s") < text.index("Comment on the match") < text.index("Time=3.0-4.0s")
    # the trained spans, decoded turn by turn, are the steps' texts each closed by <|im_end|>
    spans, current = [], []
    for token, is_trained in zip(out.input_ids, trained):
        if is_trained:
            current.append(int(token))
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    assert spans == [step.text + "<|im_end|>" for step in out.steps]
    said = " ".join(s.text.replace(" ...", "") for s in out.steps).split()
    assert said == [w for _, _, w in words]            # every word once, in order, the last one too


def test_one_video_per_step_with_its_pad_tokens(tokenizer):
    words, frames, times = clip()
    pieces = ChatPieces(tokenizer)
    out = pack(words, frames, times, pieces)
    assert len(out.video_grid_thw) == len(out.steps)
    assert [int(t) for t in out.video_grid_thw[:, 0]] == [(s.last - s.first) // 2 for s in out.steps]
    pads = int((out.input_ids == pieces.special["<|video_pad|>"]).sum())
    assert pads == sum(vision.tokens_per_video(g) for g in out.video_grid_thw)
    assert len(out.pixel_values_videos) == int(np.prod(out.video_grid_thw, axis=1).sum())
    # the first step's patches are those of its six frames as one video
    first = vision.video_inputs(frames[:6])["pixel_values_videos"]
    np.testing.assert_allclose(out.pixel_values_videos[:len(first)], first, atol=1e-6)


def test_a_tokenizer_without_the_vision_tokens_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")))
    with pytest.raises(ValueError, match="not a Qwen2-VL tokenizer"):
        ChatPieces(plain)
