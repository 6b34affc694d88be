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
