"""opgrpo_fast: kernel-accelerated OP-GRPO."""
