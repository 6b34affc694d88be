"""Small helpers shared by the similarity-estimator steps (text preparation, encoding, a tiny
locally built encoder for tests and smoke runs)."""
from __future__ import annotations

import contextlib
import re
import shutil
import sys
from pathlib import Path

import torch

from ..text import NAME_RE, keywords, mask_keywords, strip_opener

# Sentence ends for candidate texts: Latin and CJK full stops, question and exclamation marks.
SENTENCE_END_RE = re.compile(r"(?<=[.!?。！？])\s*")


def split_sentences(text: str) -> list[str]:
    """Split on . ! ? 。！？ (the mark stays with its sentence); empties dropped."""
    return [s.strip() for s in SENTENCE_END_RE.split(text) if s.strip()]


def perspective_name(reference: str) -> str | None:
    """X of a reference that opens with "In/From the perspective of X,"; None otherwise."""
    m = NAME_RE.match(reference)
    return m.group(1).strip() if m else None


def prepare_references(situation: str, references: list[str]) -> tuple[list[str], list[str]]:
    """(opener-stripped sentences, the same with the situation's keywords masked as ``[KW]``).

    The masked form is what the estimator is trained and compared on: without the opener the
    perspective's *name* cannot give the answer away, and without the situation's own words two
    perspectives on one situation cannot look alike merely because both mention it."""
    kws = keywords(situation)
    stripped = [strip_opener(r) for r in references]
    return stripped, [mask_keywords(s, kws) for s in stripped]


def load_model(model, device: str | None = None):
    """A SentenceTransformer from a path / name / None (offline MiniLM), or the object itself."""
    from ..encoder import load_encoder

    return load_encoder(model, device)


def encode_unit(model, texts: list[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """(len(texts), D) float32 L2-normalised embeddings on CPU; each distinct string encoded once."""
    uniq = list(dict.fromkeys(texts))
    if not uniq:
        return torch.empty(0, 0)
    with torch.inference_mode():
        emb = model.encode(uniq, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=progress)
    emb = torch.nn.functional.normalize(torch.as_tensor(emb).float().cpu(), dim=-1)
    index = {s: i for i, s in enumerate(uniq)}
    return emb[torch.tensor([index[t] for t in texts], dtype=torch.long)]


def build_tiny_encoder(out_dir: str | Path, hidden_size: int = 32, layers: int = 1, seed: int = 0) -> Path:
    """A randomly initialised tiny BERT + mean pooling saved as a SentenceTransformer folder
    (safetensors), with the MiniLM WordPiece tokenizer from ``default_encoder_path()``: real
    tokenisation, ~1M parameters, trains in milliseconds per step. For tests and smoke runs only.
    Idempotent: an existing build is kept."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ..encoder import default_encoder_path

    out = Path(out_dir)
    if (out / "modules.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(str(default_encoder_path()))  # MiniLM's uncased WordPiece
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=256)
    torch.manual_seed(seed)
    model = BertModel(cfg)
    # In a random BERT the position / token-type vectors every sentence shares dominate the mean
    # pooling (all cosines ~0.97); zeroed, the untrained model is roughly a bag of words with a
    # realistic cosine spread (~0.3-0.8), so thresholds like the reward's 0.7 mean something.
    with torch.no_grad():
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
    raw = out.with_name(out.name + ".hf")
    model.save_pretrained(raw, safe_serialization=True)
    tok.save_pretrained(raw)
    # a plain HF folder loads as Transformer + mean Pooling; saving it writes the ST layout
    SentenceTransformer(str(raw), device="cpu").save(str(out))
    shutil.rmtree(raw, ignore_errors=True)
    return out


@contextlib.contextmanager
def cli_errors():
    """For ``python -m`` entry points: a bad input file or judge set-up ends with one clear line
    (file:line, URL, model path) and exit status 2 instead of a traceback."""
    from ..data_io import DataError
    from .judges import JudgeError

    try:
        yield
    except (DataError, JudgeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
