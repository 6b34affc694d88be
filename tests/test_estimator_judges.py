"""The four yes/no judges, each with a tiny local model or a local HTTP server (no network, no hub)."""
import json
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import torch

from local_server import serve
from opgrpo_fast.similarity import build_triplets as bt
from opgrpo_fast.similarity.judges import (QUESTION, HeuristicJudge, HFJudge, JudgeError, NameJudge, NLIJudge,
                                           OpenAIJudge, make_judge)

PAIRS = [("Helping others is kind.", "Being kind to others matters."),
         ("Rules must be followed.", "Saving money is prudent."),
         ("Yes or no?", "A much longer second statement that pads this prompt a lot more than the others.")]


# ---------------------------------------------------------------- heuristic
def test_heuristic_rule():
    j = HeuristicJudge(min_cos=0.8, min_overlap=0.2)
    pairs = [("the owner's property rights", "owner rights matter"),  # J = {owner, rights} / 4 = 0.5
             ("the owner's property rights", "owner rights matter"),
             ("cats purr", "dogs bark")]
    assert j.judge(pairs, cosines=[0.85, 0.79, 0.99]) == [True, False, False]  # cosine AND overlap
    # words of the situation (its keywords) do not count as shared content
    assert j.judge([("bike owner rights", "bike owner duties")], cosines=[0.9]) == [True]
    assert j.judge([("bike owner rights", "bike owner duties")], cosines=[0.9], keywords=[frozenset({"bike", "owner"})]) == [False]
    assert HeuristicJudge.content_words("The [KW] of the Owner's") == {"owner"}
    with pytest.raises(JudgeError, match="cosines or an encoder"):
        j.judge(pairs)
    assert j.judge([]) == []


@pytest.mark.parametrize("a, b, same", [
    ("Right to property", "Respect for property", True),   # framing words (right, respect) do not count
    ("Property rights", "Right to private property", True),  # {prope} vs {priva, prope}: 1/2
    ("Autonomy", "Duty to respect autonomy", True),
    ("Honesty", "Duty to be honest", True),                 # crude stem: hones
    ("Personal autonomy", "Autonomy", True),
    ("Freedom of expression", "Freedom of religion", False),  # 1/3
    ("Justice", "Fairness", False),                         # synonyms without a shared stem: a known miss
    ("Right to life", "Duty to protect", False),
    ("Duty to others", "Right of others", False),           # nothing but framing words: no evidence
])
def test_name_judge_rule(a, b, same):
    j = NameJudge()
    assert j.judge([("x", "y")], names=[(a, b)]) == [same]
    assert j.judge([("x", "y")], names=[(b, a)]) == [same]  # symmetric


def test_name_judge_falls_back_without_names():
    class Always(HeuristicJudge):
        def judge(self, pairs, *, cosines=None, keywords=None, **_):
            self.seen = (list(pairs), list(cosines), list(keywords))
            return [True] * len(pairs)

    fb = Always()
    j = NameJudge(fallback=fb)
    pairs = [("a1", "b1"), ("a2", "b2"), ("a3", "b3")]
    names = [("Justice", "Fairness"), (None, "Justice"), ("Honesty", "Duty to be honest")]
    kws = [frozenset({"k1"}), frozenset({"k2"}), frozenset({"k3"})]
    assert j.judge(pairs, cosines=[0.1, 0.2, 0.3], keywords=kws, names=names) == [False, True, True]
    assert fb.seen == ([("a2", "b2")], [0.2], [frozenset({"k2"})])  # only the unnamed pair, with its context
    assert NameJudge(fallback=HeuristicJudge(min_cos=0.5, min_overlap=0.0)).judge(pairs, cosines=[0.9, 0.1, 0.9]) == [
        True, False, True]  # no names at all: the heuristic rule throughout
    with pytest.raises(ValueError, match="one entry per pair"):
        j.judge(pairs, names=names[:2])
    with pytest.raises(ValueError, match="min_name_overlap"):
        NameJudge(min_name_overlap=0.0)
    assert isinstance(make_judge("names"), NameJudge) and make_judge("names", min_name_overlap=1.0).min_name_overlap == 1.0


# ---------------------------------------------------------------- (a) local causal LM
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from opgrpo_fast.tiny import build_tiny_model

    texts = ["Yes", "No", "Yes.", "No."] * 40 + [QUESTION.format(a=a, b=b) for a, b in PAIRS] * 5
    return build_tiny_model(tmp_path_factory.mktemp("lm") / "tiny", texts, vocab_size=400)


def test_hf_judge_yes_no_tokens_and_padding(tiny_lm):
    judge = HFJudge(str(tiny_lm), device="cpu", batch_size=3)
    assert judge.chat and judge.yes_id != judge.no_id
    assert judge.tok.decode([judge.yes_id]) == "Yes" and judge.tok.decode([judge.no_id]) == "No"  # whole words
    assert "<|im_start|>assistant" in judge.prompt("a", "b")
    batched = judge.yes_minus_no(PAIRS)
    # a padded batch scores like each prompt alone (left padding + explicit position ids)
    single = torch.cat([judge.yes_minus_no([p]) for p in PAIRS])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
    # and like a direct forward pass reading the two logits
    ids = judge.tok(judge.prompt(*PAIRS[1]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = judge.model(**ids).logits[0, -1]
    assert float(batched[1]) == pytest.approx(float(logits[judge.yes_id] - logits[judge.no_id]), abs=1e-4)
    assert judge.judge(PAIRS) == [bool(d > 0) for d in batched]
    # swapping the two ids flips every verdict: the answer really is "Yes vs No"
    judge.yes_id, judge.no_id = judge.no_id, judge.yes_id
    assert judge.judge(PAIRS) == [not (d > 0) for d in batched]


def test_hf_judge_clear_error_on_bad_path(tmp_path):
    with pytest.raises(JudgeError, match="cannot load a causal LM"):
        HFJudge(str(tmp_path / "missing"))


# ---------------------------------------------------------------- (c) NLI cross-encoder
def make_nli(path, id2label, favour):
    """A tiny BERT sequence classifier whose classifier always prefers label ``favour``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from opgrpo_fast.encoder import default_encoder_path

    tok = AutoTokenizer.from_pretrained(str(default_encoder_path()))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=len(id2label), id2label=id2label,
                     label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[favour] = 5.0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_nli_judge_reads_entailment_index(tmp_path):
    labels = {0: "contradiction", 1: "entailment", 2: "neutral"}
    assert NLIJudge(make_nli(tmp_path / "e", labels, 1), device="cpu").judge(PAIRS) == [True] * 3
    assert NLIJudge(make_nli(tmp_path / "c", labels, 0), device="cpu").judge(PAIRS) == [False] * 3
    # another label order: entailment is read from id2label, not assumed to be index 1
    other = {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}
    j = NLIJudge(make_nli(tmp_path / "o", other, 0), device="cpu")
    assert j.entail == 0 and j.judge(PAIRS) == [True] * 3
    with pytest.raises(JudgeError, match="entailment label"):
        NLIJudge(make_nli(tmp_path / "n", {0: "LABEL_0", 1: "LABEL_1"}, 0), device="cpu")


def test_nli_judge_needs_entailment_both_ways(tmp_path, monkeypatch):
    j = NLIJudge(make_nli(tmp_path / "e", {0: "contradiction", 1: "entailment", 2: "neutral"}, 1), device="cpu")
    ent, neu = [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
    # rows: (a,b) for the 3 pairs, then (b,a) for the 3 pairs
    monkeypatch.setattr(j.model, "predict", lambda pairs, **kw: np.array([ent, ent, neu, ent, neu, ent]))
    assert j.judge(PAIRS) == [True, False, False]


# ---------------------------------------------------------------- (b) OpenAI-compatible endpoint
class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        srv = self.server
        srv.hits += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.bodies.append(body)
        mode = srv.modes.pop(0) if srv.modes else srv.default_mode
        if mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        if mode == "400":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b"bad model name")
            return
        if mode == "slow":
            time.sleep(0.6)  # longer than the client's timeout; bounded so the thread ends
        text = body["messages"][0]["content"]
        answer = "Maybe" if "UNSURE" in text else "Yes." if "kind" in text else "no"
        reply = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout path)
            pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with serve(_Handler, hits=0, bodies=[], modes=[], default_mode="ok") as srv:
        yield srv


def test_openai_judge_answers(server):
    j = OpenAIJudge(server.url, "tiny-judge", api_key="", timeout=2, retries=0, workers=2)
    assert j.url.endswith("/v1/chat/completions")
    assert j.judge(PAIRS) == [True, False, False]
    assert server.hits == 3 and {b["model"] for b in server.bodies} == {"tiny-judge"}
    assert {b["messages"][0]["content"] for b in server.bodies} == {QUESTION.format(a=a, b=b) for a, b in PAIRS}
    assert j.judge([("UNSURE", "x")]) == [False] and j.unparsed == 1


def test_openai_judge_retries_then_names_the_url(server):
    server.modes = ["500"]  # one transient failure, then fine
    j = OpenAIJudge(server.url + "/chat/completions", "m", timeout=2, retries=2, backoff=0.01, workers=1)
    assert j.judge(PAIRS[:1]) == [True] and server.hits == 2
    server.default_mode, server.hits = "500", 0
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1:\d+/v1/chat/completions failed after 3 attempt.*HTTP 500"):
        j.judge(PAIRS[:1])
    assert server.hits == 3
    server.default_mode = "400"  # a client error is not retried
    with pytest.raises(JudgeError, match="HTTP 400: bad model name"):
        j.judge(PAIRS[:1])


def test_openai_judge_timeout_and_dead_port(server):
    server.default_mode = "slow"
    j = OpenAIJudge(server.url, "m", timeout=0.2, retries=1, backoff=0.01, workers=1)
    t0 = time.perf_counter()
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1.*failed after 2 attempt.*(?i:timed? ?out)"):
        j.judge(PAIRS[:1])
    assert time.perf_counter() - t0 < 5
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    dead = OpenAIJudge(f"http://127.0.0.1:{port}/v1", "m", timeout=0.5, retries=1, backoff=0.01)
    with pytest.raises(JudgeError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed after 2"):
        dead.judge(PAIRS[:1])


def test_make_judge_errors():
    with pytest.raises(ValueError, match="unknown judge"):
        make_judge("oracle")
    with pytest.raises(JudgeError, match="--judge hf needs --judge-model"):
        make_judge("hf")
    with pytest.raises(JudgeError, match="URL"):
        make_judge("openai", model="m")


# ---------------------------------------------------------------- judges wired into the builder
@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from opgrpo_fast.similarity.common import build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.getbasetemp() / "tiny_encoder")


def _cli(tmp_path, tiny_encoder, *judge_args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "s.jsonl"
    refs = [f"In the perspective of V{k}, statement number {k} is kind." for k in range(4)]
    data.write_text(json.dumps({"situation": "A test situation", "references": refs}) + "\n")
    out = tmp_path / "t.jsonl"
    stats = bt.main(["--data", str(data), "--out", str(out), "--base", str(tiny_encoder), "--min-cos", "-1", *judge_args])
    return stats, out


def test_cli_with_openai_judge(tmp_path, tiny_encoder, server):
    stats, out = _cli(tmp_path, tiny_encoder, "--judge", "openai", "--judge-url", server.url, "--judge-model", "m")
    assert server.hits == 6  # every pair of 4 references asked once; all "yes" -> no negative left
    assert stats["rejected: every other sentence judged the same as the pair"] == 1


def test_cli_with_local_judges(tmp_path, tiny_encoder, tiny_lm):
    stats, out = _cli(tmp_path, tiny_encoder, "--judge", "hf", "--judge-model", str(tiny_lm))
    assert stats["written"] + stats["rejected"] == 1
    nli = make_nli(tmp_path / "nli", {0: "contradiction", 1: "entailment", 2: "neutral"}, 1)
    stats, _ = _cli(tmp_path / "n", tiny_encoder, "--judge", "nli", "--judge-model", nli)
    assert stats["rejected: every other sentence judged the same as the pair"] == 1
