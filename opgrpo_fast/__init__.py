"""opgrpo_fast: kernel-accelerated OP-GRPO (Overton Pluralistic GRPO).

``from opgrpo_fast import OvertonReward`` is the entry point; the batched ops live in
:mod:`opgrpo_fast.ops`, the RL-framework adapters in :mod:`opgrpo_fast.integrations`.
Attributes resolve lazily so ``import opgrpo_fast.text`` does not pull in torch or
sentence-transformers.
"""
import importlib

__version__ = "0.1.0"
_LAZY = {
    "OvertonReward": ".reward",
    "RewardBreakdown": ".reward",
    "RewardConfig": ".config",
    "PROMPT_TEMPLATE": ".config",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'opgrpo_fast' has no attribute {name!r}")
