"""A small tokenizer with Qwen2-VL's special tokens, built offline for the packer tests."""
from __future__ import annotations

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]


def tiny_qwen_tokenizer():
    """A byte-level BPE (any text round-trips) with Qwen2-VL's chat and vision special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Time=0.0-3.0s the striker shoots and scores ...", "You are a helpful assistant.",
              "system user assistant Comment on the match as it happens."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=SPECIAL)
