"""OvertonReward end to end with a deterministic stub encoder: every rule's numbers are exact."""
import math
import random

import pytest
import torch

from opgrpo_fast import OvertonReward
from opgrpo_fast.published import score_published
from stub_encoder import StubEncoder, at_cos, basis

REFS = [f"In the perspective of R{k}, reason {k}." for k in range(5)]


def wrap(lines, summary="r0 r1 r2 r3 r4"):
    return "<core perspectives>\n" + "\n".join(lines) + "\n</core perspectives>\n<summary>\n" + summary + "\n</summary>"


def cand(k):
    return f"In the perspective of C{k}, claim {k}."


def make(table=None, **cfg):
    fixed = {r: basis(k) for k, r in enumerate(REFS)} | {"just text": basis(31), "x": basis(30)}
    enc = StubEncoder(fixed | (table or {}), fallback=False)
    return OvertonReward(encoder=enc, **cfg), enc


@pytest.mark.parametrize("k, bucket", [(0, 0.0), (1, 2.0), (2, 3.0), (3, 4.0), (4, 5.0), (5, 5.0)])
def test_coverage_buckets_five_refs(k, bucket):
    # candidates 0..k-1 hit references 0..k-1 exactly; the rest are orthogonal fillers
    table = {cand(i): basis(i) if i < k else basis(10 + i) for i in range(5)}
    r, _ = make(table)
    b = r.score([""], [wrap([cand(i) for i in range(5)])], [REFS])
    assert b.coverage.item() == bucket
    assert b.coverage_rate.item() == pytest.approx(k / 5)
    assert b.n_matches.item() == k


def test_coverage_bucket_below_point_two():
    refs = [f"In the perspective of Q{k}, q." for k in range(10)]
    table = {r: basis(k) for k, r in enumerate(refs)} | {cand(0): basis(0), cand(1): basis(20)}
    r = OvertonReward(encoder=StubEncoder(table, fallback=False))
    b = r.score([""], [wrap([cand(0), cand(1)])], ["\n".join(refs)])  # newline-joined references
    assert (b.coverage_rate.item(), b.coverage.item()) == (pytest.approx(0.1), 1.0)


def test_one_to_one_and_threshold():
    # two candidates both close to reference 0 only: one match (one-to-one); 0.69 never matches
    table = {cand(0): at_cos(0, 0.95, 20), cand(1): at_cos(0, 0.9, 21), cand(2): at_cos(1, 0.69, 22)}
    r, _ = make(table)
    b = r.score([""], [wrap([cand(0), cand(1), cand(2)])], [REFS])
    assert b.n_matches.item() == 1
    table[cand(2)] = at_cos(1, 0.71, 22)
    r, _ = make(table)
    assert r.score([""], [wrap([cand(0), cand(1), cand(2)])], [REFS]).n_matches.item() == 2


@pytest.mark.parametrize("n, dups, rate, bucket", [
    (5, 0, 1.0, 1.0), (5, 1, 0.8, 0.4), (10, 1, 0.9, 0.75), (5, 2, 0.6, 0.0), (1, 0, 1.0, 1.0), (0, 0, 1.0, 1.0),
])
def test_uniqueness_buckets(n, dups, rate, bucket):
    # the last `dups` candidates repeat candidate 0 exactly
    table = {cand(i): basis(8 + i) for i in range(n)}
    lines = [cand(i) for i in range(n - dups)] + [f"In the perspective of D{j}, again." for j in range(dups)]
    table |= {f"In the perspective of D{j}, again.": basis(8) for j in range(dups)}
    r, _ = make(table)
    b = r.score([""], [wrap(lines) if lines else ""], [REFS])
    assert b.n_candidates.item() == n
    assert b.uniqueness_rate.item() == pytest.approx(rate)
    assert b.uniqueness.item() == pytest.approx(bucket)


def test_uniqueness_sequential_rule():
    # a~b (0.8) and b~c (0.8) but a,c apart (0.28): b is redundant, and b (redundant) does not mark c
    a = [1.0, 0.0, 0.0]
    b_ = [0.8, 0.6, 0.0]
    c = [0.28, 0.96, 0.0]
    table = {cand(0): a + [0.0] * 29, cand(1): b_ + [0.0] * 29, cand(2): c + [0.0] * 29}
    r, _ = make(table)
    out = r.score([""], [wrap([cand(0), cand(1), cand(2)])], [REFS])
    assert out.uniqueness_rate.item() == pytest.approx(2 / 3)


def test_total_formula_and_clamp():
    table = {cand(0): basis(0), cand(1): basis(1)}
    r, _ = make(table)
    good = wrap([cand(0), cand(1)], summary="C0 and C1")
    b = r.score(["", ""], [good, "just text"], [REFS, REFS])
    # good: 2/5 matches → bucket 3; format 2; tag 0; uniqueness 1 → 0.9 + 0.2 + 0.3
    assert b.total[0].item() == pytest.approx(0.3 * 3 + 0.1 * 2 + 0.3 * 1)
    # "just text": one segment, no match, tag fails, uniqueness 1 → max(0, -0.2 + 0.3)
    assert (b.tag[1].item(), b.format[1].item()) == (pytest.approx(-0.2), 0.0)
    assert b.total[1].item() == pytest.approx(0.1)
    r2, _ = make(table, weight_uniqueness=0.1)
    assert r2.score([""], ["just text"], [REFS]).total.item() == 0.0  # clamped at 0


def test_continuous_mode():
    table = {cand(i): basis(i) for i in range(2)}
    r, _ = make(table, bucketed=False)
    b = r.score([""], [wrap([cand(0), cand(1)])], [REFS])
    assert b.coverage.item() == pytest.approx(5 * 0.4)
    assert b.uniqueness.item() == 1.0


def test_keyword_masking_reaches_the_encoder():
    r = OvertonReward(encoder=StubEncoder())
    prompt = "Eating meat at dinner"
    r.score([prompt], [wrap(["In the perspective of Health, eating MEAT is fine."])], [REFS])
    (call,) = r.encoder.calls
    assert "In the perspective of Health [KW] [KW] is fine" in call
    assert set(REFS) <= set(call)  # references are not masked


def test_one_batched_call_dedup_and_reference_cache():
    r = OvertonReward(encoder=StubEncoder())
    comps = [wrap([cand(0), cand(1)]), wrap([cand(1), cand(2)]), wrap([cand(0)])]
    r.score(["p"] * 3, comps, [REFS] * 3)
    assert len(r.encoder.calls) == 1
    call = r.encoder.calls[0]
    assert len(call) == len(set(call)) == 5 + 3  # every distinct string exactly once
    r.score(["p"] * 3, comps, [REFS] * 3)
    assert not set(REFS) & set(r.encoder.calls[1])  # references came from the cache
    r.clear_cache()
    r.score(["p"], comps[:1], [REFS])
    assert set(REFS) <= set(r.encoder.calls[2])


def _random_batch(seed, n_prompts=6, g=4):
    rng = random.Random(seed)
    prompts, comps, refs, table = [], [], [], {}
    for p in range(n_prompts):
        rs = [f"In the perspective of V{p}_{k}, value {k}." for k in range(rng.randint(0, 6))]
        for k, s in enumerate(rs):
            table[s] = basis(k, 32)
        for _ in range(g):
            lines = []
            for j in range(rng.randint(0, 7)):
                s = f"In the perspective of W{rng.randint(0, 9)} {j} {p} {rng.random():.3f}, text."
                target = rng.randint(0, 6)
                table[s] = at_cos(target, rng.choice([0.2, 0.5, 0.75, 0.9, 0.99, 1.0]), 10 + rng.randint(0, 3))
                lines.append(s)
            comps.append(wrap(lines) if lines and rng.random() < 0.8 else "\n".join(lines))
            prompts.append("")
            refs.append(rs if rng.random() < 0.5 else "\n".join(rs))
    return prompts, comps, refs, table


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_equals_published_structure(backend):
    from opgrpo_fast.ops import use_backend

    prompts, comps, refs, table = _random_batch(0)
    enc = StubEncoder(table, fallback=False)
    with use_backend(backend):
        fast = OvertonReward(encoder=enc).score(prompts, comps, refs)
    slow = score_published(enc, prompts, comps, refs)
    for key in ("total", "coverage", "uniqueness", "format", "tag", "coverage_rate", "uniqueness_rate", "n_matches"):
        got = getattr(fast, key).tolist()
        want = [row[key] for row in slow]
        assert got == pytest.approx(want, abs=1e-6), key


def test_advantages_from_score():
    r, _ = make({cand(0): basis(0), cand(1): basis(1)})
    comps = [wrap([cand(0)]), wrap([cand(0), cand(1)]), "x", "x"]
    b, adv = r.score_with_advantages([""] * 4, comps, [REFS] * 4, group_size=2)
    assert torch.isfinite(adv).all()
    assert adv[2:].tolist() == [0.0, 0.0]  # equal rewards: exact zeros
    assert adv[1] > 0 > adv[0]
    _, adv1 = r.score_with_advantages([""] * 4, comps, [REFS] * 4, group_size=1)
    assert adv1.tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="4.*3|3.*4"):
        r.score_with_advantages([""] * 4, comps, [REFS] * 4, group_size=3)


@pytest.mark.parametrize("args, match", [
    ((["p"], ["a", "b"], [REFS, REFS]), "equal lengths"),
    ((["p", "p"], ["a", 3], [REFS, REFS]), r"completions\[1\] must be a string"),
    (("p", ["a"], [REFS]), "prompts must be a list"),
    ((["p"], ["a"], [[1, 2]]), r"references\[0\]"),
])
def test_bad_input(args, match):
    r, _ = make()
    with pytest.raises(ValueError, match=match):
        r.score(*args)


def test_nan_embeddings_rejected():
    enc = StubEncoder({"bad": [math.nan] * 32})
    r = OvertonReward(encoder=enc)
    with pytest.raises(ValueError, match="NaN"):
        r.score(["p"], ["bad"], [REFS])


def test_unknown_config_and_bad_values():
    with pytest.raises(ValueError, match="unknown reward option"):
        OvertonReward(encoder=StubEncoder(), match_treshold=0.5)
    with pytest.raises(ValueError, match="match_threshold"):
        OvertonReward(encoder=StubEncoder(), match_threshold=3)


def test_empty_batch():
    r, _ = make()
    b = r.score([], [], [])
    assert len(b) == 0 and b.total.dtype == torch.float32
