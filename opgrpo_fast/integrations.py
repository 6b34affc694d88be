"""Drop-in Overton reward for other RL codebases. Each entry point scores its whole batch in one
``OvertonReward.score`` call, so a prompt's completions are embedded and matched together.

- TRL:      ``GRPOTrainer(reward_funcs=[make_trl_reward()], ...)`` (or ``trl_reward_func``); the
            dataset needs a ``references`` column (list of strings or newline-joined string).
- verl:     ``compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos)`` for
            verl's batch reward manager; ``ground_truth`` holds the references, the prompt/situation
            comes from ``extra_info["situation"]`` or ``extra_info["prompt"]`` when present.
- OpenRLHF: ``reward_func(queries, prompts, labels)`` for ``--remote_rm_url reward_file.py``;
            ``labels`` hold the references; the response is the query minus its prompt.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch

from .reward import OvertonReward


@functools.lru_cache(maxsize=4)
def _default_reward(frozen_config: tuple = ()) -> OvertonReward:
    return OvertonReward(**dict(frozen_config))


def _text(x: Any) -> str:
    """TRL passes plain strings or conversations (lists of {"role", "content"} messages)."""
    if isinstance(x, str):
        return x
    if isinstance(x, (list, tuple)) and all(isinstance(m, dict) for m in x):
        return "\n".join(str(m.get("content", "")) for m in x if m.get("role") != "system")
    if isinstance(x, dict) and "content" in x:
        return str(x["content"])
    raise ValueError(f"expected a string or a list of chat messages, got {type(x).__name__}")


def _last_user_turn(x: Any) -> str:
    if isinstance(x, (list, tuple)) and x and all(isinstance(m, dict) for m in x):
        users = [m for m in x if m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else _text(x)
    return _text(x)


def make_trl_reward(reward: OvertonReward | None = None, references_key: str = "references",
                    **config) -> Callable[..., list[float]]:
    """A TRL ``reward_funcs`` entry: ``f(prompts, completions, **columns) -> list[float]``."""

    def overton_reward(prompts, completions, **kwargs) -> list[float]:
        if references_key not in kwargs:
            raise ValueError(f"the dataset needs a {references_key!r} column with the reference perspectives "
                             f"(got columns {sorted(k for k in kwargs if k != 'trainer_state')})")
        r = reward or _default_reward(tuple(sorted(config.items())))
        b = r.score([_last_user_turn(p) for p in prompts], [_text(c) for c in completions], list(kwargs[references_key]))
        return b.total.tolist()

    return overton_reward


def trl_reward_func(prompts, completions, **kwargs) -> list[float]:
    """TRL reward function with the default encoder and config (dataset column ``references``)."""
    return make_trl_reward()(prompts, completions, **kwargs)


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict | None] | None = None, reward: OvertonReward | None = None,
                        **_: Any) -> list[dict[str, float]]:
    """verl batch ``compute_score``: one dict per sample with ``score`` plus every reward part."""
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    prompts = [str((e or {}).get("situation", (e or {}).get("prompt", ""))) for e in extra_infos]
    r = reward or _default_reward()
    b = r.score(prompts, list(solution_strs), list(ground_truths))
    rows = b.rows()
    return [{"score": row["total"], **row} for row in rows]


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """verl per-sample ``compute_score`` (prefer the batch form: it shares one encoder call)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any],
                reward: OvertonReward | None = None, **_: Any) -> dict[str, Any]:
    """OpenRLHF remote reward function: returns rewards, scores and per-part extra logs."""
    responses = [q[len(p):] if q.startswith(p) else q for q, p in zip(queries, prompts)]
    r = reward or _default_reward()
    b = r.score(list(prompts), responses, list(labels))
    return {"rewards": b.total.clone(), "scores": b.total.clone(),
            "extra_logs": {k: torch.tensor(v) for k, v in b.means().items()}}
