"""A deterministic stand-in for a SentenceTransformer so reward numbers in tests are exact."""
from __future__ import annotations

import hashlib
import math

import torch


def basis(k: int, dim: int = 32) -> list[float]:
    v = [0.0] * dim
    v[k] = 1.0
    return v


def at_cos(k: int, cos: float, other: int, dim: int = 32) -> list[float]:
    """A unit vector with cosine ``cos`` to basis(k), the rest of its mass on basis(other)."""
    v = [0.0] * dim
    v[k] = cos
    v[other] = math.sqrt(max(0.0, 1.0 - cos * cos))
    return v


class StubEncoder:
    """``encode`` looks strings up in ``table``; unknown strings get a pseudo-random vector from a
    hash (nearly orthogonal to everything in 32+ dims) when ``fallback`` is set, else KeyError.
    Every call is recorded in ``calls``."""

    device = torch.device("cpu")

    def __init__(self, table: dict[str, list[float]] | None = None, dim: int = 32, fallback: bool = True):
        self.table = dict(table or {})
        self.dim = dim
        self.fallback = fallback
        self.calls: list[list[str]] = []

    def vector(self, s: str) -> torch.Tensor:
        if s in self.table:
            return torch.tensor(self.table[s], dtype=torch.float32)
        if not self.fallback:
            raise KeyError(f"StubEncoder: no vector for {s!r}")
        seed = int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little")
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.dim, generator=g)

    def encode(self, sentences, convert_to_tensor=True, **kwargs):
        self.calls.append(list(sentences))
        if not sentences:
            return torch.empty(0, self.dim)
        return torch.stack([self.vector(s) for s in sentences])
