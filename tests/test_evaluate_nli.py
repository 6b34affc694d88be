"""NLI protocol: sentence split, item score = mean_i max_j P(entail | e_i, s_j), accuracy > 0.33,
summary statistics, and the Hugging Face scorer's labelling and batching."""
import math

import pytest

from opgrpo_fast.evaluate.nli import (HFEntailmentScorer, entailment_index, nli_scores, split_sentences,
                                      summarize)


class StubNLI:
    """P(entailment) looked up by (premise, hypothesis); unknown pairs get ``default``."""

    def __init__(self, table, default=0.0):
        self.table, self.default, self.calls = table, default, []

    def entailment_probs(self, premises, hypotheses):
        self.calls.append(list(zip(premises, hypotheses)))
        return [self.table.get(pair, self.default) for pair in zip(premises, hypotheses)]


REFS = ["In the perspective of Care, alpha holds.", "From the perspective of Liberty, beta holds."]


def test_split_sentences():
    text = ("<core perspectives>\nIn the perspective of A, e.g. this is fine. Dr. Who agrees! \"Yes.\" 2. Next?\n"
            "- a bullet line\n\n</core perspectives>\n<summary>ok then.</summary>")
    assert split_sentences(text) == ["In the perspective of A, e.g. this is fine.", "Dr. Who agrees!", '"Yes."',
                                     "Next?", "a bullet line", "ok then."]
    assert split_sentences("") == [] and split_sentences("<summary> . </summary>\n---") == []
    assert split_sentences("version 2.5 is out. it works") == ["version 2.5 is out. it works"]  # no capital: no split


def test_item_score_is_mean_of_max_and_opener_is_stripped():
    stub = StubNLI({("alpha holds.", "One."): 0.9, ("alpha holds.", "Two."): 0.2,
                    ("beta holds.", "One."): 0.1, ("beta holds.", "Two."): 0.3})
    [r] = nli_scores([REFS], ["One. Two."], stub)
    assert r.per_reference == pytest.approx([0.9, 0.3]) and r.score == pytest.approx(0.6) and r.n_sentences == 2
    premises = {p for call in stub.calls for p, _ in call}
    assert premises == {"alpha holds.", "beta holds."}  # premise = explanation without "In the perspective of X,"


def test_empty_response_scores_zero_and_pairs_are_scored_once_in_one_call():
    stub = StubNLI({("alpha holds.", "Same."): 0.5, ("beta holds.", "Same."): 0.5})
    res = nli_scores([REFS, REFS, REFS], ["Same.", "", "<core perspectives></core perspectives>"], stub)
    assert [r.score for r in res] == pytest.approx([0.5, 0.0, 0.0])
    assert res[1].per_reference == [0.0, 0.0] and res[1].n_sentences == 0
    assert len(stub.calls) == 1 and len(stub.calls[0]) == 2  # deduplicated, all items batched together


def test_threshold_edge_and_summary_statistics():
    refs = [["In the perspective of X, claim."]]
    at = nli_scores(refs, ["S."], StubNLI({("claim.", "S."): 0.33}))[0].score
    above = nli_scores(refs, ["S."], StubNLI({("claim.", "S."): 0.3300001}))[0].score
    assert summarize([at])["accuracy"] == 0.0  # strictly greater than 0.33
    assert summarize([above])["accuracy"] == 1.0
    scores = [0.6, 0.33, 0.0, 0.9]
    s = summarize(scores)
    mean = sum(scores) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in scores) / 3)
    assert s["n"] == 4 and s["accuracy"] == 0.5 and s["mean"] == pytest.approx(mean)
    assert s["std"] == pytest.approx(std) and s["stderr"] == pytest.approx(std / 2)
    assert s["accuracy_stderr"] == pytest.approx(math.sqrt(0.25 / 4))
    assert summarize([0.7])["std"] == 0.0 and summarize([])["accuracy"] is None
    assert summarize([0.2, 0.3], threshold=0.25)["accuracy"] == 0.5


def test_mismatched_lengths_are_errors():
    with pytest.raises(ValueError, match="2 reference sets but 1"):
        nli_scores([REFS, REFS], ["x"], StubNLI({}))

    class Short(StubNLI):
        def entailment_probs(self, p, h):
            return [0.5]

    with pytest.raises(ValueError, match="1 probabilities for 4 pairs"):
        nli_scores([REFS], ["One. Two."], Short({}))


def test_entailment_label_lookup():
    assert entailment_index({0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}) == 2
    assert entailment_index({"0": "entailment", "1": "not_entailment"}) == 0
    with pytest.raises(ValueError, match="no entailment label.*LABEL_0"):
        entailment_index({0: "LABEL_0", 1: "LABEL_1"}, "my-nli")


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory):
    from opgrpo_fast.evaluate.tiny_nli import build_tiny_nli_model

    return build_tiny_nli_model(tmp_path_factory.mktemp("nli") / "tiny-nli")


def test_hf_scorer_batches_match_single_pairs(tiny_nli):
    scorer = HFEntailmentScorer.load(str(tiny_nli), device="cpu", batch_size=3)
    assert scorer.index == 2
    premises = ["short one.", "a much longer premise about people helping each other in hard times.",
                "mid length here."]
    hyps = ["yes.", "no, it is about something else entirely and goes on.", "maybe so."]
    batched = scorer.entailment_probs(premises * 2, hyps * 2)
    single = [scorer.entailment_probs([p], [h])[0] for p, h in zip(premises, hyps)]
    assert batched == pytest.approx(single * 2, abs=1e-5)  # padding and the length sort change nothing
    assert all(0.0 < p < 1.0 for p in batched)


def test_hf_scorer_without_entailment_label_fails_clearly(tiny_nli):
    scorer = HFEntailmentScorer.load(str(tiny_nli), device="cpu")
    scorer.model.config.id2label = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    with pytest.raises(ValueError, match="no entailment label"):
        HFEntailmentScorer(scorer.model, scorer.tok, name="tiny")
