"""Test setup. TRITON_INTERPRET must be set before anything imports triton, so it is done here,
at the top of the first module pytest imports: on a machine without CUDA the Triton kernels then
run (slowly) on CPU tensors through Triton's interpreter."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
try:
    import torch

    _cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Qwen2 + BPE built once per test session (the trainer's 'tiny' model)."""
    from opgrpo_fast.train.model import tiny_model_dir

    return str(tiny_model_dir(str(tmp_path_factory.mktemp("tiny"))).parent)
