"""LLM judge against a scripted OpenAI-compatible server on 127.0.0.1: valid answers, fenced JSON,
malformed JSON, bad schemas, 429/500, timeouts and auth errors. Bad answers are retried, then
recorded as missing; nothing raises and nothing saved is lost. Every request loop is bounded and
the server shuts itself down."""
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest

from local_server import serve
from opgrpo_fast.evaluate.judge import (ASPECTS, JudgeClient, JudgeConfig, JudgeFormatError, parse_verdict,
                                        run_judge, summarize_judge)

SCORES = {"helpfulness": 4, "clarity": 5, "factuality": 3, "depth": 2, "engagement": 4}
VERDICT = json.dumps({a: {"score": s, "reason": f"{a} reason"} for a, s in SCORES.items()})
MAX_REQUESTS = 200  # the server refuses to go on past this: no test can loop on it


class JudgeHandler(BaseHTTPRequestHandler):
    """The answer depends on the CASE:<name> marker in the user message and on how often that
    case was asked before."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status, payload, headers=()):
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        case = user.split("CASE:", 1)[1].split()[0] if "CASE:" in user else "valid"
        with srv.lock:
            srv.counts[case] += 1
            srv.total += 1
            n, over = srv.counts[case], srv.total > MAX_REQUESTS
            srv.bodies.append(body)
        if over:
            return self._send(503, {"error": "request budget spent"})

        def chat(content):
            return {"choices": [{"message": {"role": "assistant", "content": content}}]}

        if case == "fenced":
            return self._send(200, chat(f"```json\n{VERDICT}\n```"))
        if case == "malformed_once" and n == 1:
            return self._send(200, chat('Sure! Here is my rating: {"helpfulness": {"score": 4,'))
        if case == "bad_schema":
            bad = json.loads(VERDICT)
            bad["depth"]["score"] = 7
            return self._send(200, chat(json.dumps(bad)))
        if case == "rate_limited" and n <= 2:
            return self._send(429, {"error": "slow down"}, headers=[("Retry-After", "0")])
        if case == "server_error_once" and n == 1:
            return self._send(500, "not json at all")
        if case == "not_openai" and n == 1:
            return self._send(200, "<html>proxy error</html>")
        if case == "slow":
            time.sleep(0.6)  # longer than the client's timeout
        if case == "auth":
            return self._send(401, {"error": "bad key"})
        return self._send(200, chat(VERDICT))


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch):
    # urllib honours *_proxy variables; a machine with one set must still reach 127.0.0.1 directly
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server():
    with serve(JudgeHandler, lock=threading.Lock(), counts=Counter(), total=0, bodies=[]) as srv:
        yield srv


def client(srv, **kw):
    delays = []
    cfg = JudgeConfig(url=srv.url, model="judge-m", timeout=0.25, max_attempts=3, backoff=0.5, concurrency=4, **kw)
    c = JudgeClient(cfg, sleep=delays.append)  # record backoff instead of sleeping
    c.delays = delays
    return c


def test_parse_verdict_strict_schema():
    v = parse_verdict(VERDICT)
    assert {a: v[a]["score"] for a in ASPECTS} == SCORES and v["depth"]["reason"] == "depth reason"
    assert parse_verdict(f"```json\n{VERDICT}\n```") == v
    upper = json.dumps({a.upper(): {"score": 3.0, "reason": "r"} for a in ASPECTS})
    assert parse_verdict(upper)["clarity"]["score"] == 3
    for bad in ("Sure: " + VERDICT, "[1, 2]", json.dumps({"helpfulness": {"score": 4, "reason": "x"}}),
                VERDICT.replace('"score": 4', '"score": "4"'), VERDICT.replace('"score": 2', '"score": 2.5'),
                VERDICT.replace('"score": 2', '"score": true'), VERDICT.replace('"score": 2', '"score": 0')):
        with pytest.raises(JudgeFormatError):
            parse_verdict(bad)


def test_valid_fenced_and_retried_answers(server):
    c = client(server)
    cases = ["valid", "fenced", "malformed_once", "rate_limited", "server_error_once", "not_openai"]
    results = c.judge_many([("topic", f"answer CASE:{k}") for k in cases])
    for k, r in zip(cases, results):
        assert r["error"] is None and r["scores"] == SCORES, k
        assert r["overall"] == pytest.approx(sum(SCORES.values()) / 5)
    attempts = dict(zip(cases, [r["attempts"] for r in results]))
    assert attempts == {"valid": 1, "fenced": 1, "malformed_once": 2, "rate_limited": 3, "server_error_once": 2,
                        "not_openai": 2}
    assert 0.0 in c.delays  # the 429's Retry-After: 0 was honoured
    body = server.bodies[0]
    assert body["model"] == "judge-m" and body["temperature"] == 0.0 and "response_format" not in body
    assert body["messages"][0]["role"] == "system" and "JSON" in body["messages"][0]["content"]


def test_bad_answers_become_missing_after_bounded_retries(server):
    c = client(server)
    bad, slow, auth = c.judge_many([("t", "CASE:bad_schema"), ("t", "CASE:slow"), ("t", "CASE:auth")])
    assert bad["scores"] is None and bad["attempts"] == 3 and "bad answer" in bad["error"]
    assert slow["scores"] is None and slow["attempts"] == 3 and "timed out" in slow["error"].lower()
    assert auth["scores"] is None and auth["attempts"] == 1 and auth["error"] == "HTTP 401"  # not retried
    assert server.counts["bad_schema"] == 3 and server.counts["slow"] == 3 and server.counts["auth"] == 1
    backoff = sorted(d for d in c.delays if d > 0)  # exponential: 0.5, 1.0 (+ <= 10 % jitter), per bad item
    assert len(backoff) == 4 and 0.5 <= backoff[0] <= 0.55 and 1.0 <= backoff[-1] <= 1.1


def test_run_judge_logs_incrementally_and_only_asks_again_for_missing(server, tmp_path):
    c = client(server)
    log = tmp_path / "judge.jsonl"
    ids, sits, resps = ["a", "b", "c"], ["t"] * 3, ["fine CASE:valid", "CASE:bad_schema", "CASE:fenced"]
    first = run_judge(c, ids, sits, resps, log, log=lambda m: None)
    assert [r["scores"] is not None for r in first] == [True, False, True]
    assert len(log.read_text().splitlines()) == 3
    s = summarize_judge(first)
    assert s["n_judged"] == 2 and s["n_missing"] == 1
    assert s["aspects"] == {a: float(v) for a, v in SCORES.items()} and s["overall"] == pytest.approx(3.6)
    before = server.total
    again = run_judge(c, ids, sits, resps, log, log=lambda m: None)
    assert server.total - before == 3  # only "b" asked again (3 attempts); a and c reused
    assert [r["scores"] for r in again] == [r["scores"] for r in first]
    changed = run_judge(c, ids, sits, ["other text CASE:valid", resps[1], resps[2]], log, log=lambda m: None)
    assert changed[0]["scores"] == SCORES and server.counts["valid"] == 2  # a changed answer is judged anew


def test_summary_overall_is_mean_of_aspect_means():
    r1 = {"scores": {a: 5 for a in ASPECTS}}
    r2 = {"scores": {**{a: 1 for a in ASPECTS}, "depth": 3}}
    s = summarize_judge([r1, r2, {"scores": None}])
    assert s["aspects"]["depth"] == 4.0 and s["aspects"]["clarity"] == 3.0
    assert s["overall"] == pytest.approx((4 * 3.0 + 4.0) / 5) and s["n_missing"] == 1
    assert summarize_judge([{"scores": None}])["overall"] is None


def test_cli_with_judge_keeps_responses_and_records_missing(server, tmp_path):
    from opgrpo_fast import OvertonReward
    from opgrpo_fast.evaluate.__main__ import main
    from stub_encoder import StubEncoder

    data = tmp_path / "d.jsonl"
    resp = tmp_path / "r.jsonl"
    refs = ["In the perspective of Care, help."]
    with data.open("w") as fd, resp.open("w") as fr:
        for i, case in enumerate(["valid", "bad_schema", "auth"]):
            fd.write(json.dumps({"id": f"q{i}", "situation": f"topic {i}", "references": refs}) + "\n")
            fr.write(json.dumps({"id": f"q{i}", "response": f"answer CASE:{case}", "n_tokens": 5}) + "\n")
    saved = resp.read_text()
    out = tmp_path / "out"
    rc = main(["--data", str(data), "--responses", str(resp), "--out", str(out), "--no-nli", "--judge", server.url,
               "--judge-model", "judge-m", "--judge-timeout", "0.5", "--judge-attempts", "2", "--judge-backoff", "0.01",
               "--name", "judged"],
              reward=OvertonReward(encoder=StubEncoder()))
    assert rc == 0 and resp.read_text() == saved
    res = json.loads((out / "results.json").read_text())
    assert res["judge"]["n_judged"] == 1 and res["judge"]["n_missing"] == 2
    assert res["metrics"]["judge_overall"] == pytest.approx(3.6) and res["metrics"]["judge_depth"] == 2.0
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["judge_error"] is None for r in rows] == [True, False, False]
    assert "Judge overall" in (out / "results.md").read_text()
    from opgrpo_fast.evaluate.compare import main as compare

    png = tmp_path / "judged.png"
    assert compare([str(out), "--out", str(png)]) == 0  # with the judge panel
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
