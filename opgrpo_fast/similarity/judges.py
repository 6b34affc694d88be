"""Yes/no judges for "do these two statements express the same meaning or perspective?".

Every judge has ``judge(pairs, *, cosines=None, keywords=None) -> list[bool]`` over a list of
``(statement_a, statement_b)`` pairs, batched; ``cosines`` (the builder's base-model cosine of
each pair) and ``keywords`` (the situation's keyword set of each pair) are context that only the
heuristic judges use, and so is ``names`` (each pair's two perspective names, ``None`` where a
reference has no "In the perspective of X," opener). The builder hands judges the opener-stripped, *unmasked* sentences: readable
text for a language model; the ``[KW]`` masking is for the encoder.

* :class:`HFJudge` - a local causal LM (any transformers path): Yes vs No next-token logits after
  a chat-template prompt;
* :class:`OpenAIJudge` - an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, TGI, ...);
* :class:`NLIJudge` - an NLI cross-encoder: entailment in both directions;
* :class:`NameJudge` - offline, no model: compares the perspectives' own *names* ("In the
  perspective of Right to property" vs "... of Respect for property"), falling back to the
  heuristic rule when a reference names none;
* :class:`HeuristicJudge` - offline, no model: cosine AND content-word overlap (see its docstring
  for what it can and cannot tell apart).
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

from ..text import WORD_RE, stopwords

log = logging.getLogger(__name__)

QUESTION = ("Do the following two statements express the same meaning or perspective? "
            "Answer with Yes or No only.\n\nStatement A: {a}\nStatement B: {b}")
# HTTP statuses worth retrying: rate limits and transient server / gateway failures.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_YES_NO_RE = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)

Pair = tuple[str, str]


class JudgeError(RuntimeError):
    """A judge could not be built or could not answer (the message names the model or URL)."""


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Judge:
    """Base class: ``judge(pairs) -> list[bool]`` ("same meaning or perspective?")."""

    name = "judge"

    def judge(self, pairs: Sequence[Pair], *, cosines: Sequence[float] | None = None,
              keywords: Sequence[frozenset[str]] | None = None,
              names: Sequence[tuple[str | None, str | None]] | None = None) -> list[bool]:
        raise NotImplementedError

    def __call__(self, pairs, **context) -> list[bool]:
        return self.judge(pairs, **context)


class HeuristicJudge(Judge):
    """Offline stand-in for a real judge. Rule: "yes" iff

        cosine >= ``min_cos``  AND  Jaccard(content words of A, content words of B) >= ``min_overlap``

    where content words are lower-cased word tokens minus the 179 stopwords and minus the
    situation's keywords (words both statements share only because both talk about the situation
    do not count). ``cosine`` is the builder's base-model cosine of the masked sentences (or, when
    not given, computed with ``encoder``).

    Limits, stated plainly: it only accepts pairs the *base* encoder already finds very similar,
    so it can never teach the encoder a paraphrase the base model misses; word overlap does not
    see negation or opposite stances ("X supports Y" vs "X opposes Y" pass), and two wordings of
    one perspective that share no content word are judged "no". Its "yes" pairs are near-
    paraphrases in the base model's own view; use an LLM or NLI judge for real triplets.
    """

    name = "heuristic"

    def __init__(self, min_cos: float = 0.8, min_overlap: float = 0.1, encoder=None):
        if not (-1.0 <= min_cos <= 1.0 and 0.0 <= min_overlap <= 1.0):
            raise ValueError(f"HeuristicJudge: min_cos in [-1, 1] and min_overlap in [0, 1], got {min_cos}, {min_overlap}")
        self.min_cos, self.min_overlap, self.encoder = min_cos, min_overlap, encoder

    @staticmethod
    def content_words(text: str, ignore: frozenset[str] = frozenset()) -> set[str]:
        sw = stopwords()
        return {w for w in (t.lower() for t in WORD_RE.findall(text)) if w not in sw and w not in ignore and w != "kw"}

    @staticmethod
    def overlap(a: set[str], b: set[str]) -> float:
        return len(a & b) / len(a | b) if a or b else 0.0

    def judge(self, pairs, *, cosines=None, keywords=None, **_) -> list[bool]:
        if not pairs:
            return []
        if cosines is None:
            if self.encoder is None:
                raise JudgeError("HeuristicJudge needs the pairs' cosines or an encoder to compute them")
            from .common import encode_unit

            emb = encode_unit(self.encoder, [s for p in pairs for s in p])
            cosines = (emb[0::2] * emb[1::2]).sum(-1).tolist()
        if len(cosines) != len(pairs) or (keywords is not None and len(keywords) != len(pairs)):
            raise ValueError("HeuristicJudge: cosines / keywords must have one entry per pair")
        out = []
        for k, ((a, b), cos) in enumerate(zip(pairs, cosines)):
            ignore = keywords[k] if keywords is not None else frozenset()
            jac = self.overlap(self.content_words(a, ignore), self.content_words(b, ignore))
            out.append(bool(cos >= self.min_cos and jac >= self.min_overlap))
        return out


class NameJudge(Judge):
    """Offline judge that reads the perspectives' *names*. Rule, for a pair whose references both
    open with "In/From the perspective of X,": "yes" iff

        Jaccard(name stems of X_a, name stems of X_b) >= ``min_name_overlap`` (0.5)

    where a name's stems are its lower-cased words minus stopwords and minus :attr:`GENERIC`
    (the framing words of values / rights / duties: "right", "duty", "respect", "protect", ...),
    each cut to its first ``stem_len`` (5) letters - a crude stemmer that joins honest/honesty and
    autonomy/autonomous. So "Right to property" = "Respect for property" = "Property rights",
    "Autonomy" = "Duty to respect autonomy", "Right to life" = "Sanctity of life"; but "Freedom of
    expression" != "Freedom of religion" (1/3) and "Justice" != "Fairness". Pairs where a name is
    missing go to ``fallback`` (default: :class:`HeuristicJudge`).

    Why: the names are ValuePrism's (and the paper's data format's) own statement of which
    perspective a reference explains, so this judge is independent of any encoder - unlike the
    cosine rule, it can say "same" about two explanations the base model finds far apart, and
    "different" about two it finds close. Limits: synonyms with no shared stem ("Justice" /
    "Fairness", "Safety" / "Duty to protect") are called different, so some hard negatives are
    really the same perspective; a shared generic-looking word can join two perspectives that
    differ ("Right to life" / "Quality of life"), and so can the 5-letter stem ("Responsibility" /
    "Duty to be responsive"). Read by hand, 40 ValuePrism triplets built with ``--min-cos 0.5``:
    37 positives clearly the same perspective, 3 not (those three cases); about 6 negatives
    arguably the same perspective ("Autonomy" / "Right to personal freedom").
    """

    name = "names"
    GENERIC = frozenset({
        "right", "rights", "duty", "duties", "respect", "respecting", "perfect", "imperfect", "obligation",
        "obligations", "moral", "value", "values", "principle", "principles", "other", "others", "one", "one's",
        "oneself", "people", "person", "individual", "individuals", "promote", "promoting", "protect",
        "protection", "protecting", "uphold", "upholding", "maintain", "ensure", "avoid", "prevent", "preserve",
        "preservation"})
    _WORD = re.compile(r"[a-z][a-z'\-]*")

    def __init__(self, min_name_overlap: float = 0.5, stem_len: int = 5, fallback: Judge | None = None):
        if not 0.0 < min_name_overlap <= 1.0 or stem_len < 1:
            raise ValueError(f"NameJudge: min_name_overlap in (0, 1] and stem_len >= 1, got {min_name_overlap}, "
                             f"{stem_len}")
        self.min_name_overlap, self.stem_len = min_name_overlap, stem_len
        self.fallback = fallback if fallback is not None else HeuristicJudge()

    def stems(self, name: str) -> set[str]:
        sw = stopwords()
        return {w[:self.stem_len] for w in self._WORD.findall(name.lower())
                if len(w) > 2 and w not in sw and w not in self.GENERIC}

    def same_name(self, a: str, b: str) -> bool:
        sa, sb = self.stems(a), self.stems(b)
        return bool(sa and sb) and len(sa & sb) / len(sa | sb) >= self.min_name_overlap

    def judge(self, pairs, *, cosines=None, keywords=None, names=None) -> list[bool]:
        if names is not None and len(names) != len(pairs):
            raise ValueError("NameJudge: names must have one entry per pair")
        named = [k for k in range(len(pairs)) if names is not None and names[k][0] and names[k][1]]
        out: list[bool | None] = [None] * len(pairs)
        for k in named:
            out[k] = self.same_name(*names[k])
        rest = [k for k in range(len(pairs)) if out[k] is None]
        if rest:
            pick = lambda seq: None if seq is None else [seq[k] for k in rest]  # noqa: E731
            for k, ans in zip(rest, self.fallback.judge([pairs[k] for k in rest], cosines=pick(cosines),
                                                        keywords=pick(keywords))):
                out[k] = ans
        return [bool(x) for x in out]


class HFJudge(Judge):
    """A local causal LM (any transformers path). The question goes through the tokenizer's chat
    template (user turn + generation prompt); "yes" iff the next-token logit of the first token of
    "Yes" beats that of "No". Without a chat template the prompt ends in "Answer:" and the tokens
    are " Yes" / " No". Batched with left padding and explicit position ids, so a padded batch
    scores exactly like one prompt at a time."""

    name = "hf"

    def __init__(self, model_path: str, device: str | None = None, batch_size: int = 8, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.batch_size = batch_size
        try:
            self.tok = AutoTokenizer.from_pretrained(str(model_path))
            self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype)
        except OSError as exc:
            raise JudgeError(f"HFJudge: cannot load a causal LM from {model_path!r}: {exc}") from exc
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "left"
        self.chat = bool(getattr(self.tok, "chat_template", None))
        yes, no = ("Yes", "No") if self.chat else (" Yes", " No")
        self.yes_id, self.no_id = self._first_token(yes), self._first_token(no)
        if self.yes_id == self.no_id:
            raise JudgeError(f"HFJudge: {yes!r} and {no!r} start with the same token in {model_path!r}'s tokenizer")

    def _first_token(self, word: str) -> int:
        ids = self.tok.encode(word, add_special_tokens=False)
        if not ids:
            raise JudgeError(f"HFJudge: the tokenizer maps {word!r} to no token")
        return ids[0]

    def prompt(self, a: str, b: str) -> str:
        text = QUESTION.format(a=a, b=b)
        if self.chat:
            return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
        return text + "\nAnswer:"

    def yes_minus_no(self, pairs: Sequence[Pair]):
        """logit(Yes) - logit(No) per pair (float32 CPU tensor)."""
        import torch

        out = []
        for chunk in _batches(list(pairs), self.batch_size):
            # a chat template already carries its special tokens; don't add a second BOS
            enc = self.tok([self.prompt(a, b) for a, b in chunk], return_tensors="pt", padding=True,
                           add_special_tokens=not self.chat).to(self.device)
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
            with torch.inference_mode():
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                    position_ids=pos).logits[:, -1, :].float()
            out.append((logits[:, self.yes_id] - logits[:, self.no_id]).cpu())
        return torch.cat(out) if out else torch.empty(0)

    def judge(self, pairs, **_) -> list[bool]:
        return [bool(d > 0) for d in self.yes_minus_no(pairs)]


class OpenAIJudge(Judge):
    """An OpenAI-compatible chat endpoint: ``url`` is the API base (``http://host:8000/v1``) or the
    full ``.../chat/completions`` address; ``model`` the served model name; the key comes from
    ``api_key`` or $OPENAI_API_KEY (optional: local servers need none). One request per pair,
    ``workers`` in flight; each retries on timeouts, connection errors and HTTP 408/429/5xx with
    exponential backoff (``backoff`` · 2^k seconds), then raises :class:`JudgeError` naming the URL.
    An answer that starts with neither "yes" nor "no" counts as "no" and is tallied in
    ``unparsed`` (logged)."""

    name = "openai"

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 1.0, workers: int = 4, max_tokens: int = 4):
        if not url or not model:
            raise JudgeError("OpenAIJudge needs both a URL (--judge-url) and a model name (--judge-model)")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self.workers, self.max_tokens = max(1, workers), max_tokens
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.unparsed = 0
        self.requests = 0

    def _post(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests += 1
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:  # before URLError: HTTPError is a subclass
                detail = exc.read()[:200].decode("utf-8", "replace")
                if exc.code not in RETRY_STATUS:
                    raise JudgeError(f"judge endpoint {self.url}: HTTP {exc.code}: {detail}") from None
                last = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except json.JSONDecodeError:
                last = "the reply is not JSON"
        raise JudgeError(f"judge endpoint {self.url} failed after {self.retries + 1} attempt(s): {last}")

    def ask(self, a: str, b: str) -> bool:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                           "messages": [{"role": "user", "content": QUESTION.format(a=a, b=b)}]}).encode()
        reply = self._post(body)
        try:
            content = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {self.url}: unexpected reply {str(reply)[:200]}") from None
        m = _YES_NO_RE.match(content)
        if m is None:
            self.unparsed += 1
            log.warning("judge endpoint %s: answer %r is neither yes nor no; counted as no", self.url, content[:40])
            return False
        return m.group(1).lower() == "yes"

    def judge(self, pairs, **_) -> list[bool]:
        if not pairs:
            return []
        with ThreadPoolExecutor(min(self.workers, len(pairs))) as pool:
            return list(pool.map(lambda p: self.ask(*p), pairs))


class NLIJudge(Judge):
    """An NLI cross-encoder (``sentence_transformers.CrossEncoder``): "yes" iff entailment is the
    top label for (A, B) AND for (B, A) - paraphrase as bidirectional entailment. The entailment
    index is read from the model config's ``id2label`` (label orders differ between NLI models)."""

    name = "nli"

    def __init__(self, model_path: str, device: str | None = None, batch_size: int = 32):
        from sentence_transformers import CrossEncoder

        try:
            self.model = CrossEncoder(str(model_path), device=device)
        except OSError as exc:
            raise JudgeError(f"NLIJudge: cannot load a cross-encoder from {model_path!r}: {exc}") from exc
        labels = {int(k): str(v) for k, v in (getattr(self.model.config, "id2label", None) or {}).items()}
        entail = [i for i, name in labels.items() if "entail" in name.lower() and "not" not in name.lower()]
        if len(entail) != 1:
            raise JudgeError(f"NLIJudge: cannot find one entailment label in {model_path!r}'s id2label {labels}")
        self.entail, self.n_labels, self.batch_size = entail[0], len(labels), batch_size

    def judge(self, pairs, **_) -> list[bool]:
        import numpy as np

        if not pairs:
            return []
        both = [tuple(p) for p in pairs] + [(b, a) for a, b in pairs]
        scores = np.asarray(self.model.predict(both, batch_size=self.batch_size, show_progress_bar=False,
                                               convert_to_numpy=True))
        if scores.ndim != 2 or scores.shape[1] != self.n_labels:
            raise JudgeError(f"NLIJudge: expected ({len(both)}, {self.n_labels}) label scores, got {scores.shape}")
        top = scores.argmax(axis=1)
        n = len(pairs)
        return [bool(top[i] == self.entail and top[n + i] == self.entail) for i in range(n)]


JUDGES = ("names", "heuristic", "hf", "openai", "nli")


def make_judge(kind: str, *, model: str | None = None, url: str | None = None, encoder=None, device: str | None = None,
               min_cos: float = 0.8, min_overlap: float = 0.1, min_name_overlap: float = 0.5, **kwargs) -> Judge:
    """Build a judge by name; ``model`` is a path (hf, nli) or a served model name (openai).
    ``min_cos`` / ``min_overlap``: the heuristic rule (also ``names``' fallback)."""
    if kind in ("heuristic", "names"):
        rule = HeuristicJudge(min_cos=min_cos, min_overlap=min_overlap, encoder=encoder)
        return rule if kind == "heuristic" else NameJudge(min_name_overlap, fallback=rule)
    if kind in ("hf", "nli") and not model:
        raise JudgeError(f"--judge {kind} needs --judge-model PATH")
    if kind == "hf":
        return HFJudge(model, device=device, **kwargs)
    if kind == "nli":
        return NLIJudge(model, device=device, **kwargs)
    if kind == "openai":
        return OpenAIJudge(url, model, **kwargs)
    raise ValueError(f"unknown judge {kind!r}; choose one of {JUDGES}")


__all__ = ["Judge", "JudgeError", "HeuristicJudge", "NameJudge", "HFJudge", "OpenAIJudge", "NLIJudge", "make_judge", "QUESTION",
           "JUDGES"]
