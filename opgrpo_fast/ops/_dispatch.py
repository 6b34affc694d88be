"""Backend selection for opgrpo_fast.ops, resolved once at import.

Backends
--------
``auto``       Triton kernels for CUDA tensors (when triton imports), the C++ op for greedy
               matching (CPU, or CUDA when compiled in), vectorised PyTorch elsewhere.
``reference``  the pure-PyTorch reference of every op (slow, obviously correct).
``native``     the C++ op / vectorised PyTorch, never Triton.
``triton``     force the Triton kernels; on a CPU tensor this needs ``TRITON_INTERPRET=1``
               set before triton was imported (tests do that in tests/conftest.py).

The initial value comes from ``OPGRPO_BACKEND`` (default ``auto``); tests flip it with
:func:`use_backend`.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch

BACKENDS = ("auto", "reference", "native", "triton")

try:  # resolved once: Triton is an optional extra
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAS_TRITON = False

# Triton's interpreter runs kernels on CPU tensors with numpy; it must be chosen before
# triton is imported, so reading the variable once here is exact.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    from opgrpo_fast import _C  # nanobind core, no libtorch dependency

    HAS_C = True
    HAS_C_CUDA = bool(getattr(_C, "has_cuda", False))
except ImportError as exc:  # pragma: no cover - only when the build is broken
    _C = None
    HAS_C = False
    HAS_C_CUDA = False
    warnings.warn(f"opgrpo_fast._C failed to import ({exc}); greedy matching falls back to PyTorch", stacklevel=1)


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown opgrpo_fast backend {name!r}; expected one of {BACKENDS}")
    return name


_backend = _check(os.environ.get("OPGRPO_BACKEND", "auto"))


def get_backend() -> str:
    return _backend


def set_backend(name: str) -> None:
    global _backend
    _backend = _check(name)


@contextlib.contextmanager
def use_backend(name: str):
    """Temporarily select a backend (``with use_backend("reference"): ...``)."""
    global _backend
    prev, _backend = _backend, _check(name)
    try:
        yield
    finally:
        _backend = prev


def triton_runnable(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on this tensor's device in this process."""
    return HAS_TRITON and (t.is_cuda or (t.device.type == "cpu" and TRITON_INTERPRET))


def want_triton(t: torch.Tensor) -> bool:
    """Dispatch rule shared by every op: True when the Triton kernel should run."""
    b = _backend
    if b == "triton":
        if not triton_runnable(t):
            raise RuntimeError(
                "backend 'triton' was forced but Triton cannot run here: needs the triton package and a "
                "CUDA tensor, or TRITON_INTERPRET=1 set before importing triton for CPU tensors"
            )
        return True
    return b == "auto" and HAS_TRITON and t.is_cuda
