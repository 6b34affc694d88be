"""TRL / verl / OpenRLHF adapters score a batch in one call and agree with OvertonReward."""
import pytest
import torch

from opgrpo_fast import OvertonReward
from opgrpo_fast.config import PROMPT_TEMPLATE
from opgrpo_fast.integrations import compute_score, compute_score_batch, make_trl_reward, reward_func
from stub_encoder import StubEncoder

REFS = ["In the perspective of Care, help people.", "In the perspective of Liberty, let people choose."]
GOOD = ("<core perspectives>\nIn the perspective of Care, help people.\nIn the perspective of Liberty, let people "
        "choose.\n</core perspectives>\n<summary>\ncare and liberty\n</summary>")
COMPS = [GOOD, "just words", GOOD.replace("Liberty", "Care")]


@pytest.fixture
def reward():
    return OvertonReward(encoder=StubEncoder())


def test_trl_plain_and_conversational(reward):
    f = make_trl_reward(reward=reward)
    assert f.__name__ == "overton_reward"
    expected = reward.score(["sit"] * 3, COMPS, [REFS] * 3).total.tolist()
    calls_before = len(reward.encoder.calls)
    got = f(prompts=["sit"] * 3, completions=COMPS, references=[REFS] * 3, trainer_state=None)
    assert got == pytest.approx(expected) and isinstance(got[0], float)
    assert len(reward.encoder.calls) == calls_before + 1  # the whole batch in one encoder call
    conv_prompts = [[{"role": "system", "content": "be nice"}, {"role": "user", "content": "sit"}]] * 3
    conv_comps = [[{"role": "assistant", "content": c}] for c in COMPS]
    assert f(prompts=conv_prompts, completions=conv_comps, references=[REFS] * 3) == pytest.approx(expected)
    with pytest.raises(ValueError, match="references"):
        f(prompts=["sit"], completions=["x"], answer=["y"])


def test_verl_batch_and_single(reward):
    extra = [{"situation": "sit"}] * 3
    out = compute_score_batch(["overton"] * 3, COMPS, [REFS] * 3, extra, reward=reward)
    expected = reward.score(["sit"] * 3, COMPS, [REFS] * 3)
    assert [o["score"] for o in out] == pytest.approx(expected.total.tolist())
    assert {"coverage", "uniqueness", "format", "tag"} <= set(out[0])
    one = compute_score("overton", COMPS[0], "\n".join(REFS), {"situation": "sit"}, reward=reward)
    assert one["score"] == pytest.approx(out[0]["score"])


def test_openrlhf(reward):
    prompt = PROMPT_TEMPLATE.format(situation="sit")
    out = reward_func([prompt + c for c in COMPS], [prompt] * 3, [REFS] * 3, reward=reward)
    expected = reward.score([prompt] * 3, COMPS, [REFS] * 3).total
    assert torch.allclose(out["rewards"], expected) and torch.equal(out["rewards"], out["scores"])
    assert "coverage_rate" in out["extra_logs"]
