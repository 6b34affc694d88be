"""Reward configuration: one dataclass, a docstring per field, validated in ``__post_init__``.

Defaults are the published OP-GRPO values; ``OvertonReward(**config)`` overrides any field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ENCODE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class RewardConfig:
    match_threshold: float = 0.7
    """Cosine at or above which a reference and a candidate perspective match (coverage, rule 4)."""

    redundancy_threshold: float = 0.78
    """Cosine at or above which a later candidate repeats an earlier one (uniqueness, rule 5)."""

    weight_coverage: float = 0.3
    """Weight of the coverage score (0..5 when bucketed) in the total."""

    weight_format: float = 0.1
    """Weight of the format score (0..2) in the total."""

    weight_uniqueness: float = 0.3
    """Weight of the uniqueness score (0..1) in the total."""

    tag_penalty: float = -0.2
    """Added to the total when the <core perspectives>…<summary> tag gate fails (rule 1)."""

    clamp_min: float | None = 0.0
    """The total is clamped below at this value (rule 7); None disables the clamp."""

    bucketed: bool = True
    """True: the published step buckets. False: continuous mode, coverage = 5·rate, uniqueness = rate."""

    coverage_edges: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    """Coverage bucket edges: rate 0 → 0, rate < edges[k] → k + 1, else len(edges) + 1."""

    uniqueness_steps: tuple[tuple[float, float], ...] = ((0.8, 0.75), (0.6, 0.4))
    """Uniqueness buckets below a perfect 1.0: (rate strictly above, score), checked in order; else 0."""

    mask_keywords: bool = True
    """Replace the prompt's keywords by [KW] in candidate segments before embedding (rule 3)."""

    strip_prompt_template: bool = True
    """Take keywords from the situation only when a prompt carries the paper's instruction template
    (so 'structured', 'comprehensive', … are not masked in every answer)."""

    encode_batch_size: int = 256
    """Segments per encoder forward pass (the whole batch is one length-sorted call)."""

    encode_dtype: str = "auto"
    """Encoder compute dtype: 'auto' = bf16 autocast where the device runs bf16 natively (CUDA,
    CPUs with AVX512-BF16/AMX), else fp32; or 'float32' | 'bfloat16' | 'float16' (CUDA only)."""

    reference_cache_size: int = 4096
    """Reference sets (one per prompt) whose embeddings stay cached across calls (LRU)."""

    def __post_init__(self) -> None:
        for name in ("match_threshold", "redundancy_threshold"):
            v = getattr(self, name)
            if not -1.0 <= float(v) <= 1.0:
                raise ValueError(f"RewardConfig.{name} must be a cosine in [-1, 1], got {v}")
        edges = tuple(float(e) for e in self.coverage_edges)
        if list(edges) != sorted(edges) or any(not 0.0 <= e <= 1.0 for e in edges):
            raise ValueError(f"RewardConfig.coverage_edges must be increasing rates in [0, 1], got {edges}")
        self.coverage_edges = edges
        self.uniqueness_steps = tuple((float(a), float(b)) for a, b in self.uniqueness_steps)
        if self.encode_dtype not in ENCODE_DTYPES:
            raise ValueError(f"RewardConfig.encode_dtype must be one of {ENCODE_DTYPES}, got {self.encode_dtype!r}")
        if self.encode_batch_size < 1:
            raise ValueError(f"RewardConfig.encode_batch_size must be >= 1, got {self.encode_batch_size}")
        if self.reference_cache_size < 0:
            raise ValueError(f"RewardConfig.reference_cache_size must be >= 0, got {self.reference_cache_size}")

    @property
    def coverage_max(self) -> float:
        return float(len(self.coverage_edges) + 1)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "RewardConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown reward option(s) {unknown}; valid options: {sorted(names)}")
        return cls(**kwargs)


# The paper's instruction, shared with the trainer (issue: trainer) so keywords come from the situation.
PROMPT_TEMPLATE = "Provide a structured comprehensive analysis and your opinions on this topic: {situation}\n\n"
_PROMPT_PREFIX = PROMPT_TEMPLATE.split("{situation}")[0]


def situation_from_prompt(prompt: str) -> str:
    """Return the situation when ``prompt`` contains the paper's instruction, else the prompt."""
    i = prompt.find(_PROMPT_PREFIX)
    if i < 0:
        return prompt
    rest = prompt[i + len(_PROMPT_PREFIX):]
    # chat templates append their own markers after the user turn (e.g. "<|im_end|>")
    return rest.split("<|", 1)[0].strip()


__all__ = ["RewardConfig", "PROMPT_TEMPLATE", "situation_from_prompt"]
