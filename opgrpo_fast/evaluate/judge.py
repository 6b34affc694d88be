"""LLM-as-judge through any OpenAI-compatible chat endpoint (vLLM, SGLang, OpenAI, …).

Each answer is rated 1–5 with a one-line reason on Helpfulness, Clarity, Factuality, Depth and
Engagement, as one strict JSON object. Transport errors, 429/5xx and answers that are not that
object are retried with exponential backoff; after ``max_attempts`` the item is recorded as
missing: the judge never raises into the run, and its results are appended to a JSONL as they
arrive so a re-run only asks again for what is missing. Stdlib HTTP (urllib) only.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

ASPECTS = ("helpfulness", "clarity", "factuality", "depth", "engagement")

SYSTEM_PROMPT = (
    "You are an impartial expert evaluator of answers to open-ended questions about values and society. "
    "Rate the RESPONSE to the TOPIC on five aspects, each an integer from 1 (very poor) to 5 (excellent):\n"
    "- helpfulness: does it address the topic usefully?\n"
    "- clarity: is it well organised and easy to follow?\n"
    "- factuality: are its factual claims accurate?\n"
    "- depth: does it analyse the topic thoroughly, with nuance?\n"
    "- engagement: is it interesting and engaging to read?\n"
    "Reply with ONLY a JSON object, no other text, exactly of this form:\n"
    '{"helpfulness": {"score": 1, "reason": "one sentence"}, "clarity": {"score": 1, "reason": "..."}, '
    '"factuality": {"score": 1, "reason": "..."}, "depth": {"score": 1, "reason": "..."}, '
    '"engagement": {"score": 1, "reason": "..."}}'
)
_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL | re.IGNORECASE)
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeFormatError(ValueError):
    """The judge answered, but not with the required JSON object."""


@dataclass
class JudgeConfig:
    url: str
    """Base URL of an OpenAI-compatible API (…/v1) or the full …/chat/completions URL."""
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_attempts: int = 4
    backoff: float = 2.0
    """First retry delay in seconds; doubled per attempt (plus up to 10 % jitter), capped at max_backoff.
    A 429's Retry-After is honoured up to the same cap."""
    max_backoff: float = 60.0
    concurrency: int = 8
    temperature: float = 0.0
    max_tokens: int = 1024
    json_mode: bool = False
    """Send response_format={"type": "json_object"} (servers that support it constrain decoding)."""

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"


def parse_verdict(content: str) -> dict[str, dict]:
    """{aspect: {"score": int 1..5, "reason": str}} from the judge's message (a ```json fence
    around the object is tolerated; anything else raises JudgeFormatError)."""
    m = _FENCE_RE.match(content or "")
    text = m.group(1) if m else (content or "").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JudgeFormatError(f"not JSON ({exc.msg}): {text[:120]!r}") from None
    if not isinstance(obj, dict):
        raise JudgeFormatError(f"expected a JSON object, got {type(obj).__name__}")
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    out = {}
    for a in ASPECTS:
        v = lowered.get(a)
        if not isinstance(v, dict):
            raise JudgeFormatError(f"aspect {a!r} missing or not an object")
        score, reason = v.get("score"), v.get("reason")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or score != int(score) or not 1 <= score <= 5:
            raise JudgeFormatError(f"aspect {a!r}: score must be an integer 1-5, got {score!r}")
        if not isinstance(reason, str):
            raise JudgeFormatError(f"aspect {a!r}: reason must be a string")
        out[a] = {"score": int(score), "reason": reason.strip()}
    return out


class JudgeClient:
    """Rates answers; ``judge`` never raises for transport or format problems."""

    def __init__(self, cfg: JudgeConfig, sleep: Callable[[float], None] = time.sleep):
        if cfg.max_attempts < 1 or cfg.concurrency < 1:
            raise ValueError("judge max_attempts and concurrency must be >= 1")
        self.cfg, self._sleep = cfg, sleep

    def _request(self, situation: str, response: str) -> str:
        c = self.cfg
        body = {"model": c.model, "temperature": c.temperature, "max_tokens": c.max_tokens,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                             {"role": "user", "content": f"TOPIC:\n{situation}\n\nRESPONSE:\n{response}"}]}
        if c.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        req = urllib.request.Request(c.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=c.timeout) as resp:
            payload = resp.read()
        try:
            return json.loads(payload)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise JudgeFormatError(f"not an OpenAI chat completion: {payload[:120]!r}") from exc

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        c = self.cfg
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), c.max_backoff)
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        base = min(c.backoff * 2 ** (attempt - 1), c.max_backoff)
        return base * (1 + 0.1 * random.random())  # jitter: concurrent workers don't retry in lockstep

    def judge(self, situation: str, response: str) -> dict:
        """{"scores": {aspect: int}, "reasons": {aspect: str}, "overall": mean, "attempts", "error": None},
        or scores/reasons/overall None and the last error after ``max_attempts`` tries."""
        last = "no attempt"
        for attempt in range(1, self.cfg.max_attempts + 1):
            retry_after = None
            try:
                verdict = parse_verdict(self._request(situation, response))
                scores = {a: v["score"] for a, v in verdict.items()}
                return dict(scores=scores, reasons={a: v["reason"] for a, v in verdict.items()},
                            overall=sum(scores.values()) / len(scores), attempts=attempt, error=None)
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if exc.code not in _RETRY_STATUS:  # 400/401/404…: asking again will not help
                    return dict(scores=None, reasons=None, overall=None, attempts=attempt, error=last)
            except JudgeFormatError as exc:
                last = f"bad answer: {exc}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except Exception as exc:  # noqa: BLE001 - the judge must never take the run down
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.cfg.max_attempts:
                self._sleep(self._delay(attempt, retry_after))
        return dict(scores=None, reasons=None, overall=None, attempts=self.cfg.max_attempts, error=last)

    def judge_many(self, pairs: Sequence[tuple[str, str]],
                   on_result: Callable[[int, dict], None] | None = None) -> list[dict]:
        """Judge (situation, response) pairs with at most ``concurrency`` requests in flight;
        ``on_result(i, result)`` is called (serialised) as each one finishes."""
        results: list[dict | None] = [None] * len(pairs)
        lock = threading.Lock()

        def work(i: int) -> None:
            r = self.judge(*pairs[i])
            with lock:
                results[i] = r
                if on_result is not None:
                    on_result(i, r)

        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, max(1, len(pairs)))) as pool:
            list(pool.map(work, range(len(pairs))))
        return results  # type: ignore[return-value]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def run_judge(client: JudgeClient, ids: Sequence[str], situations: Sequence[str], responses: Sequence[str],
              log_path: str | Path, log: Callable[[str], None] = print) -> list[dict]:
    """Judge every answer, reusing verdicts in ``log_path`` from the same judge model for the
    same answer text, and appending each new verdict to it as it arrives."""
    log_path = Path(log_path)
    model = client.cfg.model
    cached: dict[tuple[str, str], dict] = {}
    if log_path.exists():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that item is simply judged again
            if isinstance(row, dict) and row.get("judge_model") == model and row.get("scores"):
                cached[(str(row.get("id")), str(row.get("response_sha")))] = row
    keys = [(str(i), _digest(r)) for i, r in zip(ids, responses)]
    todo = [k for k, key in enumerate(keys) if key not in cached]
    if len(todo) < len(keys):
        log(f"judge: reusing {len(keys) - len(todo)} verdicts from {log_path}")
    with log_path.open("a", encoding="utf-8") as f:
        def save(j: int, r: dict) -> None:
            k = todo[j]
            row = dict(id=keys[k][0], response_sha=keys[k][1], judge_model=model, **r)
            cached[keys[k]] = row
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()

        client.judge_many([(situations[k], responses[k]) for k in todo], on_result=save)
    return [cached[k] for k in keys]


def summarize_judge(results: Sequence[dict]) -> dict:
    """Per-aspect means over judged items; overall = mean of the aspect means."""
    judged = [r for r in results if r.get("scores")]
    aspects = {a: (sum(r["scores"][a] for r in judged) / len(judged) if judged else None) for a in ASPECTS}
    overall = sum(aspects.values()) / len(ASPECTS) if judged else None
    return dict(n_judged=len(judged), n_missing=len(results) - len(judged), aspects=aspects, overall=overall)
