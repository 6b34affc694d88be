"""OP-GRPO trainer: ``python -m opgrpo_fast.train --config configs/<preset>.yaml [--key value ...]``,
the same under ``torchrun --nproc_per_node=N``. See :mod:`opgrpo_fast.train.loop` for the loop and
:mod:`opgrpo_fast.train.config` for every option. Submodules import torch lazily from here."""
import importlib

_LAZY = {"train": ".loop", "main": ".loop", "TrainConfig": ".config", "load_config": ".config"}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'opgrpo_fast.train' has no attribute {name!r}")
