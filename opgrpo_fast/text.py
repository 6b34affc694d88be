"""Text side of the Overton reward: tag gate, perspective splitting, keyword masking, format score.

Pure Python (regex); every rule here mirrors the published OP-GRPO reward exactly. The numbers
live in :class:`opgrpo_fast.config.RewardConfig`; this module only parses.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

# Rule 1: the whole completion must be <core perspectives>…</core perspectives><summary>…</summary>.
TAG_RE = re.compile(
    r"^\s*<core\s+perspectives>\s*(?P<core>.+?)\s*</core\s+perspectives>\s*(?P<gap>\s*)"
    r"<summary>\s*(?P<sum>.+?)\s*</summary>\s*$",
    re.IGNORECASE | re.DOTALL,
)
# Rule 2: a new perspective starts at the text start or a newline followed by the opener.
SPLIT_RE = re.compile(r"(?:^|\n)(?=(?:From|In) the perspective of )", re.IGNORECASE)
# Rule 3: word tokens.
WORD_RE = re.compile(r"\b\w+\b")
# Rule 6: the format score's own (non-anchored) searches.
CORE_RE = re.compile(r"<core\s+perspectives>(.*?)</core\s+perspectives>", re.IGNORECASE | re.DOTALL)
SUMMARY_RE = re.compile(r"<summary>(.*?)</summary>", re.IGNORECASE | re.DOTALL)
NAME_RE = re.compile(r"(?:^|\s)(?:From|In) the perspective of ([^,.\n]+)", re.IGNORECASE)
# Opener stripped from reference sentences by the similarity-estimator step.
OPENER_RE = re.compile(r"^\s*(?:From|In) the perspective of [^,]*,\s*", re.IGNORECASE)

KW_TOKEN = "[KW]"


@functools.lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """The 179-word English stopword list shipped as package data (opgrpo_fast/data)."""
    text = resources.files("opgrpo_fast").joinpath("data/english_stopwords.txt").read_text("utf-8")
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip())


def tag_gate(completion: str) -> tuple[bool, str]:
    """Rule 1. Returns (passed, body): body is the stripped core when the tags parse, else the
    whole stripped completion."""
    m = TAG_RE.match(completion)
    if m and m.group("core").strip() and m.group("sum").strip():
        return True, m.group("core").strip()
    return False, completion.strip()


def split_perspectives(text: str) -> list[str]:
    """Rule 2: split into "In/From the perspective of …" segments, stripped, empties dropped."""
    return [s.strip() for s in SPLIT_RE.split(text + "\n") if s.strip()]


def normalize_references(refs: str | list[str] | tuple[str, ...]) -> list[str]:
    """References as one newline-joined string (split by rule 2) or a list of strings (each item
    is also split by rule 2, so a well-formed list is kept item for item)."""
    if isinstance(refs, str):
        return split_perspectives(refs)
    if not isinstance(refs, (list, tuple)):
        raise ValueError(f"references must be a string or a list of strings, got {type(refs).__name__}")
    out: list[str] = []
    for r in refs:
        if not isinstance(r, str):
            raise ValueError(f"references must hold strings, got {type(r).__name__}")
        out.extend(split_perspectives(r))
    return out


@functools.lru_cache(maxsize=8192)
def keywords(prompt: str) -> frozenset[str]:
    """Rule 3: lower-cased alphanumeric word tokens of the prompt that are not stopwords."""
    sw = stopwords()
    return frozenset(t for t in (w.lower() for w in WORD_RE.findall(prompt)) if t.isalnum() and t not in sw)


def mask_keywords(segment: str, kws: frozenset[str]) -> str:
    """Rule 3: re-join the segment's word tokens with single spaces, each keyword replaced by
    ``[KW]``; the segment is returned unchanged when there are no keywords."""
    if not kws:
        return segment
    return " ".join(KW_TOKEN if t.lower() in kws else t for t in WORD_RE.findall(segment))


def strip_opener(sentence: str) -> str:
    """Drop the leading "In/From the perspective of X," of a reference sentence."""
    return OPENER_RE.sub("", sentence, count=1).strip()


@dataclass(frozen=True)
class FormatWeights:
    """Rule 6 constants (defaults are the published ones)."""

    high_share: float = 0.7  # ≥ this share of segments with the opener → base 2
    low_share: float = 0.3  # ≥ this share → base 1
    repeat_penalty: float = 0.5
    # (min share of names found in the summary, penalty), checked in order
    summary_steps: tuple[tuple[float, float], ...] = ((0.75, 0.0), (0.5, -0.5), (0.25, -0.75))
    summary_floor: float = -1.0


def format_score(completion: str, fw: FormatWeights = FormatWeights()) -> float:
    """Rule 6: 0..2 format score from the opener share, repeats and the summary's name coverage."""
    m = CORE_RE.search(completion)
    core = m.group(1) if m else completion
    m = SUMMARY_RE.search(completion)
    summary = (m.group(1) if m else completion).lower()
    segments = split_perspectives(core)
    if not segments:
        return 0.0
    names = []
    for seg in segments:
        nm = NAME_RE.search(seg)
        if nm:
            names.append(nm.group(1).strip().lower())
    share = len(names) / len(segments)
    base = 2.0 if share >= fw.high_share else 1.0 if share >= fw.low_share else 0.0
    dup_segments = len(segments) - len({s.lower() for s in segments})
    dup_names = len(names) - len(set(names))
    score = base - fw.repeat_penalty * (dup_segments + dup_names)
    unique = set(names)
    if unique:
        found = sum(1 for n in unique if n in summary) / len(unique)
        score += next((p for lo, p in fw.summary_steps if found >= lo), fw.summary_floor)
    return max(0.0, score)
