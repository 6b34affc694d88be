"""Triton kernels (installed as opgrpo_fast.kernels)."""
