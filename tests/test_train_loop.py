"""The trainer end to end on CPU: resume equality, atomic checkpoints, the qwen2.5-3b preset's wiring
(shrunk), the SFT warm start, and a learning test. Shared helpers: tests/train_helpers.py,
the tiny_dir fixture: tests/conftest.py."""
import json
import shutil

import pytest
import torch

from opgrpo_fast.train import checkpoint as ckpt_io
from opgrpo_fast.train.config import load_config
from opgrpo_fast.train.loop import train, weights_fingerprint
from opgrpo_fast.train.metrics import read_metrics

from train_helpers import STUB, tiny_args  # noqa: F401


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared 2-core box run 3-5× faster on one thread; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_resume_gives_identical_next_steps(tmp_path, tiny_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    train(load_config(tiny_args(a, tiny_dir, steps=4, checkpoint__interval=2, checkpoint__keep_last=3)))
    assert [p.name for p in ckpt_io.list_checkpoints(a)] == ["step-00000002", "step-00000004"]
    summary = train(load_config(tiny_args(b, tiny_dir, steps=4, resume=a / "step-00000002")))
    assert summary["start_step"] == 2
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in rb] == [3, 4]
    keys = ("loss", "kl", "grad_norm", "reward/total", "response_length", "clip_frac")
    assert [{k: r[k] for k in keys} for r in ra[2:]] == [{k: r[k] for k in keys} for r in rb]
    from safetensors.torch import load_file

    wa = load_file(a / "step-00000004" / "hf" / "model.safetensors")
    wb = load_file(b / "step-00000004" / "hf" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # bare --resume = latest in the output dir; the metrics of redone steps are replaced, not duplicated
    train(load_config(tiny_args(a, tiny_dir, steps=5, resume="latest")))
    assert [r["step"] for r in read_metrics(a / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_checkpoint_is_atomic(tmp_path, tiny_dir, monkeypatch):
    out = tmp_path / "run"
    real_export = ckpt_io.export_hf
    calls = {"n": 0}

    def crash_on_second_save(model, tok, path, d, stage):
        calls["n"] += 1
        real_export(model, tok, path, d, stage)
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt_io, "export_hf", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(tiny_args(out, tiny_dir, steps=2, checkpoint__interval=1)))
    assert (out / ".tmp-step-00000002").exists()  # the half-written one never got the final name
    assert [p.name for p in ckpt_io.list_checkpoints(out)] == ["step-00000001"]
    assert ckpt_io.find_checkpoint(out, "latest").name == "step-00000001"
    monkeypatch.setattr(ckpt_io, "export_hf", real_export)
    summary = train(load_config(tiny_args(out, tiny_dir, steps=2, checkpoint__interval=1, resume="latest")))
    assert summary["start_step"] == 1
    assert not (out / ".tmp-step-00000002").exists()
    final = out / "step-00000002"
    assert {p.name for p in final.iterdir()} >= {"hf", "optimizer.pt", "scheduler.pt", "rng", "trainer_state.json"}
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt_io.find_checkpoint(tmp_path / "empty", "latest")


def test_qwen_preset_wiring_shrunk(tmp_path, tiny_dir):
    """The paper preset's values, then a run of its exact wiring with the architecture shrunk to 2
    layers and random weights (Qwen2.5-3B cannot be downloaded here), Qwen-style ChatML tokenizer."""
    cfg = load_config(["--config", "qwen2.5-3b"])
    assert (cfg.rollout.num_generations, cfg.optim.lr, cfg.optim.weight_decay, cfg.loss.beta, cfg.loss.kl_clamp) == (
        10, 1e-6, 0.01, 0.001, 10.0)
    assert (cfg.loss.epsilon, cfg.loss.eps_high, cfg.loss.loss_type, cfg.optim.grad_clip, cfg.optim.schedule) == (
        0.2, 0.2, "token-mean", 1.0, "constant")
    assert (cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_prompt_length,
            cfg.rollout.max_completion_length) == (1.0, 1.0, 512, 800)
    assert (cfg.rollout.prompts_per_step, cfg.rollout.minibatch_prompts, cfg.model.bf16) == (1024, 256, True)
    assert cfg.distributed.zero_stage in (1, 2, 3) and cfg.model.name_or_path == "Qwen/Qwen2.5-3B-Instruct"

    from opgrpo_fast.train.model import tiny_model_dir

    shrink = "{num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128, num_attention_heads: 4}"
    args = ["--config", "qwen2.5-3b", "--output-dir", str(tmp_path), "--max-steps", "1", "--threads", "1",
            "--model.random_init", "true", "--model.config_overrides", shrink,
            "--model.tokenizer", str(tiny_model_dir(tiny_dir)), "--data.path", "",
            "--rollout.prompts_per_step", "2", "--rollout.prompts_per_minibatch", "1",  # 2 updates: off-policy path
            "--rollout.micro_batch_size", "5", "--rollout.max_completion_length", "8",
            "--distributed.zero_stage", "0",  # DeepSpeed runs under torchrun: test_train_distributed.py
            "--reward.encoder", STUB, "--logging.progress_bar", "false", "--logging.tensorboard", "false"]
    train(load_config(args))
    (row,) = read_metrics(tmp_path / "metrics.jsonl")
    assert row["response_length"] > 0 and torch.isfinite(torch.tensor(row["loss"]))
    hf = json.loads((tmp_path / "step-00000001" / "hf" / "config.json").read_text())
    assert (hf["model_type"], hf["num_hidden_layers"], hf["num_key_value_heads"], hf["tie_word_embeddings"]) == (
        "qwen2", 2, 2, True)
    saved = load_config(["--config", str(tmp_path / "config.yaml")])  # the resolved config round-trips
    assert saved.model.config_overrides["num_hidden_layers"] == 2 and saved.rollout.prompts_per_minibatch == 1


def test_sft_masks_prompt_and_saves_hf_folder(tmp_path, tiny_dir):
    from opgrpo_fast.sft import SFTConfig, default_summary, encode, sft_target, train_sft
    from opgrpo_fast.text import format_score, tag_gate
    from opgrpo_fast.train.data import load_examples
    from opgrpo_fast.train.model import load_tokenizer

    cfg = load_config(["--output-dir", str(tmp_path / "sft"), "--max-steps", "3", "--model.tiny_cache_dir", tiny_dir,
                       "--threads", "1"], cls=SFTConfig, default_preset=None)
    examples = load_examples(cfg.data)
    for ex in examples:  # the targets are exactly what the reward's format rules want
        assert tag_gate(sft_target(ex))[0] and format_score(sft_target(ex)) == 2.0
    assert default_summary(examples[0].references).count(",") >= 1
    for name in ("Focus", "Safety", "Fairness"):
        assert name in default_summary(examples[0].references)
    tok = load_tokenizer(cfg.model)
    ids, labels = encode(tok, examples[0], 512)
    n_prompt = labels.index(next(x for x in labels if x != -100))
    assert all(x == -100 for x in labels[:n_prompt]) and labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]).startswith("<core perspectives>") and ids[-1] == tok.eos_token_id
    out = train_sft(cfg, verbose=False)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert len(read_metrics(out / "sft_metrics.jsonl")) == 3
    # the GRPO run starts from the SFT folder
    train(load_config(tiny_args(tmp_path / "grpo", tiny_dir, steps=1, model__name_or_path=out)))


@pytest.mark.slow
def test_grpo_learns_after_sft_warm_start(tmp_path, tiny_dir):
    """A task a tiny model learns in seconds: the SFT data answers each situation in the tagged format
    AND as a plain sentence, so the warm-started policy mostly emits the plain answer (reward 0.1:
    uniqueness 0.3 - tag gate 0.2) and sometimes the tagged one (≈ 0.5 with format 2). GRPO with the
    default Overton reward must shift the choice: mean reward over the last steps clearly above the first."""
    from opgrpo_fast.sft import SFTConfig, train_sft

    rows = [("Cats or dogs", "Cost", "Care"), ("Tea or coffee", "Health", "Taste"), ("Bus or bike", "Speed", "Safety"),
            ("City or village", "Jobs", "Calm"), ("Rent or buy", "Money", "Freedom"), ("Book or film", "Depth", "Time")]
    data = tmp_path / "bimodal.jsonl"
    with data.open("w") as f:
        for s, a, b in rows:
            refs = [f"In the perspective of {a}, it matters.", f"In the perspective of {b}, it matters."]
            f.write(json.dumps({"situation": s, "references": refs, "summary": f"{a} and {b} both count."}) + "\n")
            f.write(json.dumps({"situation": s, "references": refs, "completion": f"{a} matters. {b} matters."}) + "\n")
    sft = train_sft(load_config(["--output-dir", str(tmp_path / "sft"), "--max-steps", "100", "--data.path", str(data),
                                 "--model.tiny_cache_dir", tiny_dir, "--threads", "1"], cls=SFTConfig,
                                default_preset=None), verbose=False)
    out = tmp_path / "grpo"
    train(load_config(tiny_args(out, tiny_dir, steps=20, model__name_or_path=sft, data__path=data, loss__beta=0.0,
                                rollout__num_generations=8, rollout__prompts_per_step=6, rollout__micro_batch_size=48,
                                rollout__max_completion_length=80, checkpoint__save_final="false")))
    rewards = [r["reward/total"] for r in read_metrics(out / "metrics.jsonl")]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"reward first 5 steps {first:.3f} → last 5 steps {last:.3f}")
    assert last > first + 0.08, rewards


def test_fingerprint_detects_different_weights():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b.weight[0, 0] += 1e-3
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_copy_of_checkpoint_folder_resumes(tmp_path, tiny_dir):
    """A checkpoint is self-contained: copied elsewhere, it still resumes (no absolute paths inside)."""
    a = tmp_path / "a"
    train(load_config(tiny_args(a, tiny_dir, steps=1)))
    moved = tmp_path / "elsewhere" / "ck"
    shutil.copytree(a / "step-00000001", moved)
    assert train(load_config(tiny_args(tmp_path / "b", tiny_dir, steps=2, resume=moved)))["start_step"] == 1
