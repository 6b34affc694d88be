"""Helpers shared by the test_train_* files."""

STUB = "python:stub_encoder:StubEncoder"  # tests/ is on sys.path under pytest (and via PYTHONPATH for torchrun)


def tiny_args(out, tiny, steps=2, **over) -> list[str]:
    """CLI args for a seconds-long tiny-cpu run (stub encoder, short completions)."""
    opts = {"output-dir": str(out), "max-steps": steps, "model.tiny_cache_dir": tiny, "reward.encoder": STUB,
            "rollout.num_generations": 2, "rollout.prompts_per_step": 4, "rollout.micro_batch_size": 4,
            "rollout.max_completion_length": 16, "logging.progress_bar": "false", "logging.tensorboard": "false",
            "threads": 1}
    opts.update({k.replace("__", "."): v for k, v in over.items()})
    return [x for k, v in opts.items() for x in (f"--{k}", str(v))]
