"""End to end on a tiny Qwen2 + a tiny NLI classifier + the stub encoder: generation (batched,
left-padded, tag-gated retries, incremental log, resume), scoring, reports, re-scoring from
--responses without generating, and the comparison PNG."""
import json

import pytest

from opgrpo_fast import OvertonReward
from opgrpo_fast.evaluate import load_items
from opgrpo_fast.evaluate.__main__ import main
from opgrpo_fast.evaluate.generate import GenerationConfig, Generator, build_prompt
from stub_encoder import StubEncoder

ROWS = [
    {"id": "q0", "situation": "Eating meat", "references": [
        "In the perspective of Animal welfare, animals can suffer and their suffering matters.",
        "In the perspective of Tradition, shared meals carry culture and family bonds."]},
    {"id": "q1", "situation": "Lying to protect a friend's feelings", "references": [
        "In the perspective of Honesty, telling the truth keeps trust.",
        "In the perspective of Kindness, sparing a friend pain can be caring.",
        "In the perspective of Autonomy, the friend deserves information to decide."]},
    {"id": "q2", "situation": "Taking a sick day to rest", "references":
        "In the perspective of Health, rest helps recovery.\nIn the perspective of Duty, colleagues rely on you."},
]
TEXTS = [
    "<core perspectives>\nIn the perspective of Care, helping people matters.\nIn the perspective of Liberty, "
    "people should choose.\n</core perspectives>\n<summary>\nCare and Liberty.\n</summary>",
    *[r["situation"] for r in ROWS],
]
GEN_ARGS = ["--max-new-tokens", "8", "--max-retries", "1", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from opgrpo_fast.evaluate.tiny_nli import build_tiny_nli_model
    from opgrpo_fast.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("eval")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    lm = build_tiny_model(root / "lm", TEXTS * 8, vocab_size=320)
    nli = build_tiny_nli_model(root / "nli")
    return dict(root=root, data=str(data), lm=str(lm), nli=str(nli))


def reward():
    return OvertonReward(encoder=StubEncoder())


def run(env, out, *extra, **hooks):
    argv = ["--data", env["data"], "--out", str(out), "--nli-model", env["nli"], *extra]
    return main(argv, reward=hooks.pop("reward", reward()), **hooks)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(env):
    out = env["root"] / "run_a"
    assert run(env, out, "--model", env["lm"], *GEN_ARGS) == 0
    return out


def test_generate_and_score(env, first_run):
    rows = read_jsonl(first_run / "responses.jsonl")
    assert sorted(r["id"] for r in rows) == ["q0", "q1", "q2"]
    for r in rows:
        assert r["model"] == env["lm"] and r["prompt_style"] == "implicit"
        assert r["prompt"] == build_prompt(r["situation"]) and isinstance(r["response"], str)
        assert 0 < r["n_tokens"] <= 8
        # a random tiny model never writes the tags: each answer was regenerated once, then kept
        assert r["attempts"] == (1 if r["tag_ok"] else 2)
    res = json.loads((first_run / "results.json").read_text())
    assert res["run"]["n_items"] == 3 and res["run"]["generation"]["max_new_tokens"] == 8
    assert res["nli"]["n"] == 3 and 0.0 <= res["nli"]["mean"] <= 1.0 and res["nli"]["model"] == env["nli"]
    cov = res["coverage"]
    assert cov["n"] == 3 and cov["format_pass_rate"] == pytest.approx(sum(r["tag_ok"] for r in rows) / 3)
    assert cov["mean_tokens"] == pytest.approx(sum(r["n_tokens"] for r in rows) / 3)
    assert res["metrics"]["nli_accuracy"] == res["nli"]["accuracy"]
    scores = read_jsonl(first_run / "scores.jsonl")
    assert [s["id"] for s in scores] == ["q0", "q1", "q2"] and all("nli_score" in s and "matched" in s for s in scores)
    assert len(scores[1]["nli_per_reference"]) == 3
    md = (first_run / "results.md").read_text()
    assert "NLI accuracy" in md and "Relative matching" in md and "Judge" not in md


def test_rescore_from_responses_without_generating(env, first_run, tmp_path):
    def no_generation(_):
        raise AssertionError("--responses must not generate")

    out = tmp_path / "rescored"
    assert run(env, out, "--responses", str(first_run / "responses.jsonl"), generator=no_generation) == 0
    a = json.loads((first_run / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    for k in ("nli_accuracy", "nli_mean", "relative_matching", "uniqueness_rate", "format_pass_rate", "mean_tokens"):
        assert b["metrics"][k] == pytest.approx(a["metrics"][k]), k
    assert b["run"]["model"] == env["lm"] and b["run"]["name"] == a["run"]["name"] == "lm-implicit"
    assert not (out / "responses.jsonl").exists()


def test_resume_keeps_saved_answers_and_repairs_a_cut_line(env, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    saved = dict(id="q1", situation=ROWS[1]["situation"], model=env["lm"], prompt_style="explicit",
                 prompt="p", response="PRESERVED", attempts=1, tag_ok=False, n_tokens=3, finished=True)
    (out / "responses.jsonl").write_text(json.dumps(saved) + "\n" + '{"id": "q2", "resp')  # crash mid-write
    assert run(env, out, "--model", env["lm"], "--prompt-style", "explicit", "--no-nli", *GEN_ARGS) == 0
    rows = read_jsonl(out / "responses.jsonl")
    assert len(rows) == 3 and rows[0] == saved  # q1 kept, the cut line dropped, q0 and q2 generated
    assert sorted(r["id"] for r in rows[1:]) == ["q0", "q2"]
    assert all(r["prompt"].startswith(build_prompt(r["situation"], "explicit")[:60]) for r in rows[1:])
    # another model into the same folder is refused rather than mixed in
    assert run(env, out, "--model", env["lm"], "--prompt-style", "implicit", "--no-nli", *GEN_ARGS) == 2


def test_left_padded_batch_matches_single_prompts(env):
    cfg = GenerationConfig(temperature=0.0, max_new_tokens=6, max_retries=0)
    gen = Generator.load(env["lm"], cfg, device="cpu")
    prompts = [build_prompt("a short one"), build_prompt("a considerably longer situation to force left padding")]
    batched = gen(prompts)
    assert batched == [gen([p])[0] for p in prompts]
    assert gen.tok.padding_side == "left"


def test_compare_png_and_table(env, first_run, tmp_path, capsys):
    from opgrpo_fast.evaluate.compare import main as compare

    other = tmp_path / "explicit"
    assert run(env, other, "--responses", str(first_run / "responses.jsonl"), "--name", "other run") == 0
    png, md = tmp_path / "cmp" / "compare.png", tmp_path / "compare.md"
    assert compare([str(first_run), str(other), "--out", str(png), "--md", str(md)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    table = md.read_text()
    assert "| metric | lm-implicit | other run |" in table and "NLI accuracy" in table
    assert compare([str(tmp_path / "nowhere"), "--out", str(png)]) == 2
    assert "results.json: not found" in capsys.readouterr().err


def test_default_nli_model_unavailable_is_skipped_but_a_named_one_is_an_error(env, first_run, tmp_path, monkeypatch):
    import opgrpo_fast.evaluate.__main__ as cli

    monkeypatch.setattr(cli, "DEFAULT_NLI_MODEL", str(tmp_path / "no-such-nli"))
    out = tmp_path / "skip"
    resp = str(first_run / "responses.jsonl")
    assert main(["--data", env["data"], "--responses", resp, "--out", str(out)], reward=reward()) == 0
    res = json.loads((out / "results.json").read_text())
    assert "could not be loaded" in res["nli"]["skipped"] and res["metrics"]["nli_accuracy"] is None
    assert main(["--data", env["data"], "--responses", resp, "--out", str(out),
                 "--nli-model", str(tmp_path / "no-such-nli")], reward=reward()) == 2


def test_items_are_read_with_data_io(env):
    items = load_items(env["data"])
    assert [len(it.references) for it in items] == [2, 3, 2]  # the newline-joined string is split
