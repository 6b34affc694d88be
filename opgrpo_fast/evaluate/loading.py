"""Model/tokenizer loading shared by generation and the NLI scorer: device choice, dtype, and a
tokenizer loader that respects the class a folder was saved with."""
from __future__ import annotations

import json
from pathlib import Path

import torch

# Tokenizer classes that mean "the tokenizer.json is the whole tokenizer": AutoTokenizer would map
# such a folder through its model config (e.g. to Qwen2Tokenizer, which rebuilds its own
# pre-tokenizer), so a locally trained BPE (opgrpo_fast.tiny) must be loaded as saved.
_PLAIN_FAST_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend"}


def resolve_device(device: str | None) -> torch.device:
    """'auto'/None → cuda when available, else cpu; anything else is passed to torch.device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (the issue's requirement; every model we evaluate was trained in bf16), fp32 on
    CPU where bf16 matmuls are emulated on most machines."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    """A tokenizer, loaded as the class it was saved with when that is the plain fast tokenizer,
    else through AutoTokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg = Path(name_or_path) / "tokenizer_config.json"
    if cfg.is_file():
        try:
            cls = json.loads(cfg.read_text(encoding="utf-8")).get("tokenizer_class")
        except json.JSONDecodeError:
            cls = None
        if cls in _PLAIN_FAST_CLASSES and (Path(name_or_path) / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(name_or_path))
    return AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)


def from_pretrained(auto_cls, name_or_path: str | Path, device: torch.device, trust_remote_code: bool = False):
    """``auto_cls.from_pretrained`` from safetensors only (no pickle), in :func:`model_dtype`,
    moved to ``device`` and put in eval mode; a failure names the path and what to check."""
    try:
        model = auto_cls.from_pretrained(str(name_or_path), dtype=model_dtype(device), use_safetensors=True,
                                         trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"could not load {name_or_path!r} with {auto_cls.__name__} (safetensors weights required; "
            f"the model hub is only reachable when online): {exc}"
        ) from exc
    return model.to(device).eval()
