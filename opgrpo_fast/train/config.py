"""The trainer's configuration: ONE dataclass tree (torchtitan style), a docstring per field,
validated in ``__post_init__`` with messages that name the field.

Resolution order: dataclass defaults (= the ``tiny-cpu`` preset) < ``--config configs/<name>.yaml``
< CLI overrides (``--optim.lr 1e-5`` dotted keys, or the short flags ``--output-dir``,
``--max-steps``, ``--resume [PATH]``, ``--seed``). The resolved tree is written as YAML with every run.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
BUNDLED_DATA = Path(__file__).resolve().parents[1] / "data" / "train_demo.jsonl"
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
SCALES = ("group", "batch", "none")


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config field {name}: {msg}")


def _one_of(name: str, value, options) -> None:
    _check(value in options, name, f"must be one of {list(options)}, got {value!r}")


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"
    """Policy weights: a local HF folder, a hub name, or 'tiny' (a tiny Qwen2 + byte-level BPE built
    locally from the bundled demo text on first use, cached under ``tiny_cache_dir``)."""
    tokenizer: str | None = None
    """Tokenizer folder/name; None = ``name_or_path``."""
    random_init: bool = False
    """Build the model from ``architecture`` (+ ``config_overrides``) with random weights instead of
    loading ``name_or_path`` (wiring tests of big presets whose weights cannot be downloaded)."""
    architecture: dict = field(default_factory=dict)
    """Model config fields (e.g. Qwen2.5-3B's) used with ``random_init``; needs 'model_type'."""
    config_overrides: dict = field(default_factory=dict)
    """Fields overriding the loaded/declared model config (e.g. ``num_hidden_layers: 2``)."""
    attn_implementation: str = "auto"
    """'auto' (flash_attention_2 when flash_attn imports, else sdpa), 'flash_attention_2', 'sdpa', 'eager'."""
    bf16: bool = False
    """bf16 compute: DeepSpeed's bf16 mode (bf16 weights, fp32 master copy in the optimizer), or
    autocast with fp32 weights without DeepSpeed. Off for CPU presets (fp32 keeps resume bit-exact)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (about 30% more compute, far less activation memory)."""
    tiny_cache_dir: str | None = None
    """Where ``name_or_path: tiny`` is built; None = ~/.cache/opgrpo_fast/tiny."""
    trust_remote_code: bool = False
    """Allow model code from the hub (off: Qwen2 is in transformers)."""

    def __post_init__(self):
        _one_of("model.attn_implementation", self.attn_implementation,
                ("auto", "flash_attention_2", "sdpa", "eager"))
        _check(not self.random_init or self.architecture.get("model_type") or self.name_or_path == "tiny",
               "model.architecture", "random_init needs architecture.model_type (e.g. 'qwen2')")


@dataclass
class DataConfig:
    path: str = ""
    """Training rows: .jsonl / .csv, a saved HF dataset folder, or a hub dataset name; '' = the
    bundled opgrpo_fast/data/train_demo.jsonl."""
    situation_field: str = "situation"
    """Column holding the situation (the question)."""
    references_field: str = "references"
    """Column holding the reference perspectives (list, or a newline-joined string)."""
    summary_field: str = "summary"
    """Optional column with a reference summary (used by SFT targets)."""
    completion_field: str = "completion"
    """Optional column with a ready answer: SFT trains on it verbatim instead of the built target."""
    max_rows: int | None = None
    """Use only the first N rows (None: all)."""
    shuffle: bool = True
    """Reshuffle the prompt order every epoch (seeded; the position is checkpointed)."""

    def __post_init__(self):
        _check(self.max_rows is None or self.max_rows > 0, "data.max_rows", f"must be > 0, got {self.max_rows}")

    @property
    def resolved_path(self) -> str:
        return self.path or str(BUNDLED_DATA)


@dataclass
class RolloutConfig:
    num_generations: int = 4
    """G: completions sampled per prompt; a group is always scored and normalised on one rank."""
    prompts_per_step: int = 8
    """Prompts per training step over all ranks (the paper: 1024)."""
    prompts_per_minibatch: int | None = None
    """Prompts per optimizer step (the paper: 256 → 4 updates per rollout); None = prompts_per_step."""
    micro_batch_size: int = 16
    """Sequences per forward/backward on one rank; mini-batches are reached by gradient accumulation."""
    generation_batch_size: int | None = None
    """Prompts per ``generate`` call on one rank (bounds the KV cache); None = all of the rank's prompts."""
    temperature: float = 1.0
    """Sampling temperature (log-probs in the loss use the same temperature)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_prompt_length: int = 256
    """Prompts longer than this (in tokens, chat template included) are dropped at load, with a count."""
    max_completion_length: int = 192
    """New tokens per completion; a completion stops at EOS."""
    ppo_epochs: int = 1
    """Passes over each rollout. Old log-probs are computed once per rollout only when needed (ppo_epochs
    > 1 or several mini-batches); otherwise ratio = exp(logp - logp.detach())."""

    def __post_init__(self):
        for name in ("num_generations", "prompts_per_step", "micro_batch_size", "max_prompt_length",
                     "max_completion_length", "ppo_epochs"):
            _check(getattr(self, name) >= 1, f"rollout.{name}", f"must be >= 1, got {getattr(self, name)}")
        mb = self.prompts_per_minibatch
        _check(mb is None or (mb >= 1 and self.prompts_per_step % mb == 0), "rollout.prompts_per_minibatch",
               f"must divide rollout.prompts_per_step={self.prompts_per_step}, got {mb}")
        _check(self.temperature > 0, "rollout.temperature", f"must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.generation_batch_size is None or self.generation_batch_size >= 1,
               "rollout.generation_batch_size", f"must be >= 1, got {self.generation_batch_size}")

    @property
    def minibatch_prompts(self) -> int:
        return self.prompts_per_minibatch or self.prompts_per_step


@dataclass
class LossConfig:
    beta: float = 0.001
    """KL coefficient to the frozen reference model (k3 estimator); 0 = no reference model is loaded."""
    kl_clamp: float | None = 10.0
    """Clamp of the per-token k3 KL (the paper: ±10); None: no clamp."""
    epsilon: float = 0.2
    """Lower clip: ratio ≥ 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip: ratio ≤ 1 + epsilon_high; None = epsilon."""
    loss_type: str = "token-mean"
    """Aggregation over the mini-batch: 'token-mean' (every completion token weighs the same),
    'seq-mean-token-mean', 'seq-mean-token-sum'."""
    scale_rewards: str = "group"
    """Advantage scaling: (r - group mean) / ('group' std | 'batch' std | 'none')."""
    backend: str = "auto"
    """'liger' (fused chunked lm_head + GRPO loss, no B×T×V logits), 'torch' (the reference path),
    'auto' (liger when liger_kernel imports and ZeRO stage < 3)."""
    liger_chunk_size: int = 1
    """Sequences per chunk in Liger's fused loss."""

    def __post_init__(self):
        _check(self.beta >= 0, "loss.beta", f"must be >= 0, got {self.beta}")
        _check(self.kl_clamp is None or self.kl_clamp > 0, "loss.kl_clamp", f"must be > 0, got {self.kl_clamp}")
        _check(0 <= self.epsilon < 1, "loss.epsilon", f"must be in [0, 1), got {self.epsilon}")
        _check(self.epsilon_high is None or self.epsilon_high >= 0, "loss.epsilon_high",
               f"must be >= 0, got {self.epsilon_high}")
        _one_of("loss.loss_type", self.loss_type, AGGREGATIONS)
        _one_of("loss.scale_rewards", self.scale_rewards, SCALES)
        _one_of("loss.backend", self.backend, ("auto", "liger", "torch"))
        _check(self.liger_chunk_size >= 1, "loss.liger_chunk_size", f"must be >= 1, got {self.liger_chunk_size}")

    @property
    def eps_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: str = "constant"
    """'constant' or 'cosine' (to min_lr_ratio · lr), both after a linear warmup."""
    warmup_steps: int = 0
    """Linear warmup, in optimizer steps."""
    min_lr_ratio: float = 0.0
    """Final lr / peak lr for the cosine schedule."""
    grad_clip: float | None = 1.0
    """Global grad-norm clip; None = off."""

    def __post_init__(self):
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        self.betas = tuple(float(b) for b in self.betas)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               f"must be two values in [0, 1), got {self.betas}")
        _one_of("optim.schedule", self.schedule, ("constant", "cosine"))
        _check(self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip", f"must be > 0, got {self.grad_clip}")


@dataclass
class DistributedConfig:
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 1/2/3; 0 = no DeepSpeed (plain DDP when WORLD_SIZE > 1)."""
    offload_optimizer: bool = False
    """ZeRO: keep optimizer states in CPU memory."""
    offload_param: bool = False
    """ZeRO-3: keep parameters (policy and reference) in CPU memory."""
    backend: str = "auto"
    """torch.distributed backend: 'auto' (nccl with CUDA, else gloo), 'nccl', 'gloo'."""
    deepspeed_config: str | None = None
    """Optional DeepSpeed JSON merged over the generated config (e.g. configs/ds_zero2.json)."""

    def __post_init__(self):
        _one_of("distributed.zero_stage", self.zero_stage, (0, 1, 2, 3))
        _one_of("distributed.backend", self.backend, ("auto", "nccl", "gloo"))
        _check(not self.offload_param or self.zero_stage == 3, "distributed.offload_param", "needs zero_stage 3")


@dataclass
class CheckpointConfig:
    interval: int = 0
    """Save every N steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept in the output dir (older ones are deleted after a successful save)."""
    save_final: bool = True
    """Save after the last step."""

    def __post_init__(self):
        _check(self.interval >= 0, "checkpoint.interval", f"must be >= 0, got {self.interval}")
        _check(self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    """Also write TensorBoard scalars under <output_dir>/tb when tensorboard is installed."""
    progress_bar: bool = True
    """tqdm bar on rank 0."""
    print_completions: int = 0
    """Print this many sampled completions every step (rank 0)."""


@dataclass
class RewardSection:
    encoder: str | None = None
    """Similarity encoder: None = offline all-MiniLM-L6-v2; a path / model name; or 'python:module:attr'
    (a factory or class called with no arguments, e.g. tests' StubEncoder)."""
    device: str | None = None
    """Encoder device (None: the sentence-transformers default)."""
    options: dict = field(default_factory=dict)
    """RewardConfig fields (thresholds, weights, bucketed, …): see opgrpo_fast/config.py."""

    def __post_init__(self):
        from opgrpo_fast.config import RewardConfig

        try:
            RewardConfig.from_kwargs(**self.options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"config field reward.options: {exc}") from None


@dataclass
class TrainConfig:
    preset: str = "tiny-cpu"
    """Name of the preset the config started from (informational)."""
    seed: int = 0
    """Seeds model init, data order and sampling (sampling adds the rank)."""
    max_steps: int = 30
    """Training steps (one rollout of prompts_per_step prompts each)."""
    output_dir: str = "runs/tiny-cpu"
    """metrics.jsonl, config.yaml, checkpoints (step-XXXXXXXX/) and plots go here."""
    resume: str | None = None
    """'latest' (newest checkpoint in output_dir) or a checkpoint folder; None: start fresh."""
    threads: int | None = None
    """torch intra-op CPU threads (None: torch's default). 1 for small models on shared CPUs: on this
    project's busy 2-core box a tiny-model step ran 3-5× faster with 1 thread than with 2."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    reward: RewardSection = field(default_factory=RewardSection)

    def __post_init__(self):
        _check(self.max_steps >= 1, "max_steps", f"must be >= 1, got {self.max_steps}")
        _check(self.threads is None or self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        _check(self.distributed.zero_stage < 3 or self.loss.backend != "liger", "loss.backend",
               "'liger' reads lm_head.weight outside the module, which ZeRO-3 partitions; use 'auto' or 'torch'")


# ---------------------------------------------------------------------------------- building / CLI
SHORT_FLAGS = {"--output-dir": "output_dir", "--max-steps": "max_steps", "--seed": "seed", "--resume": "resume"}


def _coerce(hint, value, name: str):
    """YAML/CLI value → the field's type (PyYAML reads '1e-6' as a string, so floats are converted)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("null", "none", "~") and type(None) in args:
            return None
        return _coerce(inner[0], value, name) if len(inner) == 1 else value
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is tuple:
            return tuple(float(v) for v in value)
        if hint is dict and not isinstance(value, dict):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ValueError(f"config field {name}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors naming the field."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config field(s) {[prefix + u for u in unknown]}; valid: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        hint = hints[k]
        if dataclasses.is_dataclass(hint):
            kwargs[k] = from_dict(hint, v or {}, f"{prefix}{k}.")
        else:
            kwargs[k] = _coerce(hint, v, prefix + k)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    def clean(x):
        if isinstance(x, tuple):
            return [clean(v) for v in x]
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return x
    return clean(dataclasses.asdict(cfg))


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"--{key}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(argv: list[str]) -> tuple[str | None, dict]:
    """``--config NAME|PATH`` and overrides → (config path or None, nested override dict)."""
    config, tree, i = None, {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; use --key value")
        key, eq, val = arg[2:].partition("=")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or nxt.startswith("--"):
                if "--" + key != "--resume":
                    raise ValueError(f"--{key} needs a value")
                val = "latest"  # bare --resume: the newest checkpoint in the output dir
            else:
                val, i = nxt, i + 1
        i += 1
        if key == "config":
            config = val
            continue
        key = SHORT_FLAGS.get("--" + key, key).replace("-", "_")
        _set_dotted(tree, key, yaml.safe_load(val) if val != "" else "")
    return config, tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in (
            "options", "architecture", "config_overrides") else v
    return out


def resolve_preset(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = CONFIG_DIR / f"{name}.yaml"
    if not cand.exists():
        known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"--config {name!r}: no such file or preset; presets: {known}")
    return cand


def load_config(argv: list[str] | None = None, cls=TrainConfig, default_preset: str | None = "tiny-cpu"):
    """Defaults < preset YAML < CLI overrides → a validated ``cls`` instance."""
    import sys

    config, overrides = parse_overrides(list(sys.argv[1:] if argv is None else argv))
    tree: dict = {}
    name = config or default_preset
    if name is not None:
        tree = yaml.safe_load(resolve_preset(name).read_text()) or {}
        if "preset" in {f.name for f in dataclasses.fields(cls)}:
            tree.setdefault("preset", Path(name).stem if name.endswith((".yaml", ".yml")) else name)
    return from_dict(cls, _merge(tree, overrides))


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = ["TrainConfig", "ModelConfig", "DataConfig", "RolloutConfig", "LossConfig", "OptimConfig",
           "DistributedConfig", "CheckpointConfig", "LoggingConfig", "RewardSection", "load_config",
           "save_config", "from_dict", "to_dict", "parse_overrides"]
