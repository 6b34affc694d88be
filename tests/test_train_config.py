"""Config tree (presets, CLI overrides, clear errors), data loading errors, the prompt sampler and the
attention switch."""
import json

import pytest

from opgrpo_fast.data_io import DataError
from opgrpo_fast.train.config import DataConfig, load_config, parse_overrides
from opgrpo_fast.train.data import PromptSampler, load_examples
from opgrpo_fast.train.loop import batch_sizes, main


def test_default_is_tiny_cpu_and_overrides_apply():
    cfg = load_config([])
    assert cfg.preset == "tiny-cpu" and cfg.model.name_or_path == "tiny"
    cfg = load_config(["--optim.lr", "1e-5", "--output-dir", "x", "--max-steps", "7", "--seed=3", "--resume",
                       "--loss.epsilon_high", "0.28", "--reward.options", "{weight_format: 0.5}"])
    assert (cfg.optim.lr, cfg.output_dir, cfg.max_steps, cfg.seed, cfg.resume) == (1e-5, "x", 7, 3, "latest")
    assert cfg.loss.eps_high == 0.28 and cfg.reward.options == {"weight_format": 0.5}
    assert load_config(["--resume", "runs/x/step-00000004"]).resume == "runs/x/step-00000004"
    assert parse_overrides(["--config", "qwen2.5-3b", "--model.bf16", "false"]) == (
        "qwen2.5-3b", {"model": {"bf16": False}})


@pytest.mark.parametrize("args, match", [
    (["--optim.lr", "0"], "optim.lr: must be > 0"),
    (["--loss.loss_type", "sum"], "loss.loss_type: must be one of"),
    (["--rollout.top_p", "1.5"], "rollout.top_p"),
    (["--rollout.prompts_per_minibatch", "3"], "rollout.prompts_per_minibatch: must divide"),
    (["--distributed.zero_stage", "4"], "distributed.zero_stage"),
    (["--rollout.num_generations", "abc"], "rollout.num_generations: cannot read 'abc' as int"),
    (["--optim.lr_max", "1"], r"unknown config field\(s\) \['optim.lr_max'\]"),
    (["--reward.options", "{match_threshold: 2}"], "reward.options: RewardConfig.match_threshold"),
    (["--reward.options", "{weight: 1}"], "reward.options: unknown reward option"),
    (["--config", "nope"], "no such file or preset"),
    (["--max-steps"], "--max_steps needs a value|--max-steps needs a value"),
    (["--distributed.zero_stage", "3", "--loss.backend", "liger"], "ZeRO-3 partitions"),
])
def test_bad_config_values_name_the_field(args, match):
    with pytest.raises(ValueError, match=match):
        load_config(args)


def test_cli_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--optim.weight_decay", "-1"])
    assert exc.value.code == 2
    assert "config field optim.weight_decay: must be >= 0" in capsys.readouterr().err


def test_world_size_divisibility_is_checked():
    cfg = load_config(["--rollout.prompts_per_step", "6"])
    assert batch_sizes(cfg, 2)["prompts"] == 3
    with pytest.raises(ValueError, match="divisible by the world size 4"):
        batch_sizes(cfg, 4)
    with pytest.raises(ValueError, match="micro_batch_size=5 must divide"):
        batch_sizes(load_config(["--rollout.micro_batch_size", "5"]), 1)


@pytest.mark.parametrize("line, match", [
    ('{"situation": "x"', "not valid JSON"),
    ('{"situation": "x"}', r"missing field\(s\) \['references'\]"),
    ('{"situation": "x", "references": []}', "'references' must be a non-empty"),
    ('{"situation": "", "references": ["In the perspective of A, b."]}', "'situation' must be a non-empty string"),
])
def test_bad_data_rows_report_file_and_line(tmp_path, line, match):
    good = json.dumps({"situation": "ok", "references": ["In the perspective of A, b."]})
    path = tmp_path / "rows.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=match) as exc:
        load_examples(DataConfig(path=str(path)))
    assert f"{path}:2" in str(exc.value)


def test_csv_rows_and_bundled_data(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('situation,references\nTea,"[""In the perspective of Taste, nice."", ""In the perspective of '
                    'Cost, cheap.""]"\n')
    (ex,) = load_examples(DataConfig(path=str(path)))
    assert ex.references == ["In the perspective of Taste, nice.", "In the perspective of Cost, cheap."]
    bundled = load_examples(DataConfig())
    assert len(bundled) >= 20 and all(e.summary for e in bundled)


def test_sampler_shards_prompts_and_resumes():
    s = PromptSampler(10, seed=1)
    full = s.next_indices(4)
    s2 = PromptSampler(10, seed=1)
    assert s2.next_indices(4, 0, 2) + s2.next_indices(0, 1, 2) == full[:2]  # rank 0 takes the first half
    s3, s4 = PromptSampler(10, seed=1), PromptSampler(10, seed=1)
    assert s3.next_indices(4, 1, 2) == full[2:]
    for _ in range(4):  # crosses an epoch boundary (10 prompts, 4 per step)
        s3.next_indices(4)
    s4.load_state_dict(s3.state_dict())
    assert s4.next_indices(4) == s3.next_indices(4)
    with pytest.raises(ValueError, match="taken on 10 prompts"):
        PromptSampler(11, seed=1).load_state_dict(s3.state_dict())


def test_attention_switch():
    from opgrpo_fast.train import model as m

    assert m.resolve_attention("auto") == m.ATTENTION
    old = m.ATTENTION
    try:
        assert m.set_attention("eager") == "eager" and m.resolve_attention("auto") == "eager"
        if not m.HAVE_FLASH_ATTN:
            with pytest.raises(ValueError, match="flash_attn does not import"):
                m.resolve_attention("flash_attention_2")
            with pytest.raises(ValueError, match="not available"):
                m.set_attention("flash_attention_2")
    finally:
        m.set_attention(old)
