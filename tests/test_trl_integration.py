"""The TRL adapter inside a real TRL GRPOTrainer step (tiny local model, deterministic stub encoder)."""
import json
from importlib import resources

import pytest

trl = pytest.importorskip("trl", reason="TRL is an optional integration (pip install trl)")

from opgrpo_fast import OvertonReward  # noqa: E402
from opgrpo_fast.integrations import make_trl_reward  # noqa: E402
from opgrpo_fast.tiny import build_tiny_model, load_tiny  # noqa: E402
from stub_encoder import StubEncoder  # noqa: E402

pytestmark = pytest.mark.slow


def test_grpo_trainer_step_with_overton_reward(tmp_path):
    from datasets import Dataset

    rows = [json.loads(x) for x in resources.files("opgrpo_fast").joinpath("data/demo_rollouts.jsonl").read_text().splitlines()]
    texts = [r["completion"] for r in rows] + [x for r in rows for x in r["references"]]
    model, tok = load_tiny(build_tiny_model(tmp_path / "tiny", texts * 3, vocab_size=320))
    situations = {r["situation"]: r["references"] for r in rows}
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": s}], "references": refs}
                            for s, refs in situations.items()] * 2)
    reward = OvertonReward(encoder=StubEncoder())
    seen = []

    def spy(prompts, completions, **kw):
        out = make_trl_reward(reward=reward)(prompts, completions, **kw)
        seen.append((len(completions), len(reward.encoder.calls)))
        return out

    args = trl.GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4,
                          num_generations=4, max_completion_length=8, logging_steps=1, report_to=[],
                          use_cpu=True, bf16=False, save_strategy="no", seed=0)
    trainer = trl.GRPOTrainer(model=model, processing_class=tok, reward_funcs=[spy], args=args, train_dataset=ds)
    trainer.train()
    assert seen and seen[0][0] == 4  # one call per generation batch: a whole group of 4 completions
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged and logged[0]["reward"] >= 0.0
