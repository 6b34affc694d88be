"""Tiny causal LMs built locally (no hub): a small Qwen2-architecture model and a byte-level BPE
tokenizer trained with ``tokenizers`` on given text, wrapped in PreTrainedTokenizerFast with a
ChatML chat template. Used by the ``tiny-cpu`` preset, tests and demos.

Load the tokenizer back with ``PreTrainedTokenizerFast.from_pretrained`` (not AutoTokenizer, which
would swap in Qwen2's own pre-tokenizer for a Qwen2 config).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Byte-level BPE on ``texts`` → PreTrainedTokenizerFast (eos = <|im_end|>, pad = <|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML
    fast.padding_side = "left"
    return fast


def tiny_qwen2_config(vocab_size: int, hidden_size: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                      intermediate_size: int = 128, max_position_embeddings: int = 1024, **overrides):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate_size,
                       max_position_embeddings=max_position_embeddings, tie_word_embeddings=True, **overrides)


def build_tiny_model(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 512, seed: int = 0,
                     **config_overrides) -> Path:
    """Train a tokenizer on ``texts``, initialise a tiny Qwen2 with random weights (seeded) and save
    both to ``out_dir`` (safetensors). Returns ``out_dir``. Idempotent: an existing build is kept."""
    import torch
    from transformers import Qwen2ForCausalLM

    out = Path(out_dir)
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    tok = train_tokenizer(texts, vocab_size)
    cfg = tiny_qwen2_config(len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                            bos_token_id=None, **config_overrides)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # a half-written folder never looks finished
    return out


def load_tiny(path: str | Path, dtype=None):
    """(model, tokenizer) from a folder written by :func:`build_tiny_model`."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False)
    return model, tok
