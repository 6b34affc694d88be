"""A tiny, randomly initialised NLI classifier (BERT, MNLI label names) built locally: the NLI
stand-in for tests and offline smoke runs, where no real NLI checkpoint can be downloaded.
Its probabilities are meaningless; it exercises the loading, labelling and batching path."""
from __future__ import annotations

from pathlib import Path

# microsoft/deberta-v2-xlarge-mnli's own label order
MNLI_LABELS = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}


def build_tiny_nli_model(out_dir: str | Path, vocab_file: str | Path | None = None, seed: int = 0,
                         id2label: dict[int, str] | None = None) -> Path:
    """Save a 2-layer BertForSequenceClassification + BertTokenizerFast (MiniLM's WordPiece vocab
    by default) to ``out_dir`` as safetensors. Idempotent, like :func:`opgrpo_fast.tiny.build_tiny_model`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out = Path(out_dir)
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    if vocab_file is None:
        from ..encoder import default_encoder_path

        vocab_file = default_encoder_path() / "vocab.txt"
    labels = dict(id2label or MNLI_LABELS)
    tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=len(labels),
                     id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # a half-written folder never looks finished
    return out
