"""Helpers shared by the op benchmarks (not collected: no bench_/test_ prefix)."""
import pytest
import torch

CUDA = torch.cuda.is_available()


def cuda_synced(fn):
    """Wrap ``fn`` so each call waits for the GPU: kernel launches are asynchronous."""
    def run(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out
    return run


def timed(benchmark, fn, args, device="cpu", **info):
    """Skip CUDA cases on CPU machines, record ``info`` (role, bytes, sizes) in extra_info, warm
    ``fn`` up once (Triton JIT, CUDA context, thread pools stay out of the timed rounds), time it."""
    if device == "cuda" and not CUDA:
        pytest.skip("CUDA benchmark")
    benchmark.extra_info.update(device=device, **info)
    fn(*args)
    return benchmark(fn, *args)
