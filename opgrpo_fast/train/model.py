"""Loading the policy / reference model and tokenizer; the attention-kernel choice.

Attention is resolved ONCE at import (nanoGPT style): ``flash_attention_2`` when the flash_attn
package imports (it needs CUDA), else PyTorch SDPA, which itself picks its flash / memory-efficient
kernel on GPU. ``set_attention`` is the switch tests flip; ``model.attn_implementation`` in the config
overrides per run. The choice is logged by the trainer.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

try:  # optional fast path
    import flash_attn  # noqa: F401

    HAVE_FLASH_ATTN = True
except Exception:  # ImportError, or a CUDA-less build failing at import
    HAVE_FLASH_ATTN = False

ATTENTION = "flash_attention_2" if HAVE_FLASH_ATTN else "sdpa"
AVAILABLE_ATTENTION = (["flash_attention_2"] if HAVE_FLASH_ATTN else []) + ["sdpa", "eager"]


def set_attention(impl: str) -> str:
    """Switch the default attention implementation ('flash_attention_2', 'sdpa', 'eager')."""
    global ATTENTION
    if impl not in AVAILABLE_ATTENTION:
        raise ValueError(f"attention {impl!r} is not available here; available: {AVAILABLE_ATTENTION}")
    ATTENTION = impl
    return impl


def resolve_attention(requested: str) -> str:
    if requested == "auto":
        return ATTENTION
    if requested == "flash_attention_2" and not HAVE_FLASH_ATTN:
        raise ValueError("model.attn_implementation=flash_attention_2 but flash_attn does not import "
                         "(pip install 'opgrpo_fast[flash]' on a CUDA machine), or use 'auto'")
    return requested


def demo_texts() -> list[str]:
    """Text the tiny tokenizer is trained on: the bundled situations, references and the reward's tags."""
    from opgrpo_fast.config import PROMPT_TEMPLATE
    from opgrpo_fast.data_io import iter_rows

    from .config import BUNDLED_DATA

    data_dir = BUNDLED_DATA.parent
    texts = ["<core perspectives>\nIn the perspective of X, y.\n</core perspectives>\n\n<summary>\nz\n</summary>"]
    for path in (BUNDLED_DATA, data_dir / "demo_rollouts.jsonl"):
        for _, row in iter_rows(path, required=("situation", "references")):
            texts.append(PROMPT_TEMPLATE.format(situation=row["situation"]))
            refs = row["references"]
            texts.extend(refs if isinstance(refs, list) else [refs])
            texts.extend(str(row[k]) for k in ("summary", "completion") if row.get(k))
    return texts


def tiny_model_dir(cache_dir: str | None = None) -> Path:
    """Build (once) and return the tiny Qwen2 folder; rank 0 builds, others wait (file lock-free:
    ``build_tiny_model`` renames a finished temp folder into place)."""
    from opgrpo_fast.tiny import build_tiny_model

    root = Path(cache_dir or os.environ.get("OPGRPO_TINY_DIR") or Path.home() / ".cache" / "opgrpo_fast" / "tiny")
    out = root / "qwen2-tiny-v1"
    if not (out / "model.safetensors").exists():
        root.mkdir(parents=True, exist_ok=True)
        try:
            # hidden 128 / 4 layers: ~0.6M parameters, learns the tag format in a few hundred SFT steps
            build_tiny_model(out, demo_texts(), vocab_size=512, seed=0, hidden_size=128, layers=4,
                             intermediate_size=256)
        except OSError:  # another process renamed its build into place first
            if not (out / "model.safetensors").exists():
                raise
    return out


def load_tokenizer(cfg):
    """Tokenizer with left padding (generation) and a pad token."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = cfg.tokenizer or cfg.name_or_path
    if path == "tiny":
        path = str(tiny_model_dir(cfg.tiny_cache_dir))
    if (Path(path) / "tokenizer.json").exists() and not (Path(path) / "vocab.json").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(path)  # tiny.py: AutoTokenizer would swap the pre-tokenizer
    else:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg, tokenizer=None, dtype: torch.dtype = torch.float32):
    """The causal LM as ``cfg`` describes it, with the resolved attention implementation."""
    from transformers import AutoConfig, AutoModelForCausalLM

    attn = resolve_attention(cfg.attn_implementation)
    path = str(tiny_model_dir(cfg.tiny_cache_dir)) if cfg.name_or_path == "tiny" else cfg.name_or_path
    if cfg.random_init:
        # overrides go in at construction so derived fields (e.g. Qwen2's per-layer layer_types) follow
        if cfg.architecture:
            arch = {**cfg.architecture, **cfg.config_overrides}
            mcfg = AutoConfig.for_model(arch.pop("model_type"), **arch)
        else:
            mcfg = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, **cfg.config_overrides)
        if tokenizer is not None:  # the declared vocab must hold the tokenizer's ids
            mcfg.vocab_size = max(int(getattr(mcfg, "vocab_size", 0) or 0), len(tokenizer))
            mcfg.pad_token_id, mcfg.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        model = AutoModelForCausalLM.from_config(mcfg, attn_implementation=attn, dtype=dtype,
                                                 trust_remote_code=cfg.trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=dtype,
                                                     use_safetensors=True, trust_remote_code=cfg.trust_remote_code,
                                                     **cfg.config_overrides)
    if tokenizer is not None:
        gc = model.generation_config
        gc.pad_token_id = tokenizer.pad_token_id
        if gc.eos_token_id is None:
            gc.eos_token_id = tokenizer.eos_token_id
    return model


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion (Qwen2.5-Instruct: <|im_end|> and <|endoftext|>)."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class PolicyHead(torch.nn.Module):
    """Wraps the causal LM so ONE forward (through DDP / DeepSpeed, whose gradient hooks need it)
    returns what the loss needs: completion hidden states (the Liger path applies lm_head itself,
    chunked) or completion logits (the PyTorch path). ``logits_to_keep`` trims to the completion."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, n_completion: int, want_logits: bool):
        # left padding: positions count real tokens only, as generate() numbered them
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        out = self.lm.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
        # token t+1 is predicted at position t: the completion's predictors are the n positions before it
        hidden = out.last_hidden_state[:, -n_completion - 1:-1]
        return self.lm.lm_head(hidden) if want_logits else hidden


def enable_activation_checkpointing(lm) -> None:
    """Recompute activations in backward (non-reentrant: works with DDP / ZeRO and frozen inputs)."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
