"""Similarity estimator: training lowers the triplet loss, the saved folder drives OvertonReward,
evaluation metrics and their controls, the demo; one slow test with the real MiniLM."""
import json
import random

import pytest
import torch

from opgrpo_fast import OvertonReward
from opgrpo_fast.data_io import iter_rows
from opgrpo_fast.similarity import evaluate as ev
from opgrpo_fast.similarity import train as tr
from opgrpo_fast.similarity.common import build_tiny_encoder, prepare_references, split_sentences
from opgrpo_fast.similarity.demo import data_file, run_demo
from opgrpo_fast.text import keywords, mask_keywords
from stub_encoder import StubEncoder, basis

TOPICS = {
    "privacy": "private secret personal confidential hidden diary messages consent".split(),
    "safety": "danger harm injury risk accident protect hazard secure".split(),
    "fairness": "equal fair justice share rights unfair balance equity".split(),
    "health": "sleep body doctor illness exercise medicine diet healthy".split(),
    "money": "cost price budget savings income expensive cheap salary".split(),
    "nature": "forest river animals climate pollution trees wildlife ocean".split(),
}


def generated_triplets(n, seed=0):
    """anchor / positive: words of one topic; negative: words of another (learnable in a few steps)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        t, u = rng.sample(sorted(TOPICS), 2)
        words = lambda k: " ".join(rng.sample(TOPICS[k], 4))  # noqa: E731
        rows.append({"anchor": words(t), "positive": words(t), "negative": words(u)})
    return rows


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.getbasetemp() / "tiny_encoder")


@pytest.fixture(scope="module")
def trained(tiny_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("est") / "model"
    path = out.parent / "triplets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generated_triplets(200)))
    summary = tr.main(["--triplets", str(path), "--base", str(tiny_encoder), "--out", str(out), "--max-steps", "24",
                       "--batch-size", "8", "--lr", "2e-3", "--logging-steps", "1", "--eval-split", "0.2"])
    return out, summary


def test_training_lowers_the_triplet_loss(trained):
    out, summary = trained
    log = json.loads((out / "train_log.json").read_text())
    losses = [h["loss"] for h in log["log_history"] if "loss" in h]
    assert len(losses) == 24 and log["steps"] == 24 and log["n_train"] == 160 and log["n_eval"] == 40
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6  # training loss falls
    assert log["eval_after"]["eval_loss"] < log["eval_before"]["eval_loss"]  # held-out loss falls too
    assert log["settings"]["scale"] == 70.0 and log["settings"]["warmup_ratio"] == pytest.approx(0.0325)
    assert (out / "model.safetensors").exists() and (out / "modules.json").exists()
    held = [r for _, r in iter_rows(out / "eval_triplets.jsonl", required=("anchor", "positive", "negative"))]
    assert len(held) == 40


def test_saved_model_drives_the_reward(trained, tiny_encoder):
    out, _ = trained
    rows = [json.loads(x) for x in data_file("demo_rollouts.jsonl").read_text().splitlines()]
    args = ([r["situation"] for r in rows], [r["completion"] for r in rows], [r["references"] for r in rows])
    base = OvertonReward(encoder=str(tiny_encoder), bucketed=False, encode_dtype="float32").score(*args)
    fine = OvertonReward(encoder=str(out), bucketed=False, encode_dtype="float32").score(*args)
    assert torch.isfinite(fine.total).all()
    changed = (fine.coverage_rate != base.coverage_rate) | (fine.uniqueness_rate != base.uniqueness_rate)
    assert changed.any()
    assert torch.equal(fine.format, base.format)  # text rules untouched


def test_split_and_triplet_file_errors(tmp_path):
    rows = generated_triplets(10)
    a, b = tr.split_rows(rows, 0.1, seed=3)
    assert len(a) == 9 and len(b) == 1 and tr.split_rows(rows, 0.1, seed=3) == (a, b)
    assert tr.split_rows(rows, 0.0, 0)[1] == []
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"anchor": "a", "positive": "p", "negative": "n"}\n{"anchor": "a", "positive": ""}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2: missing field\(s\) \['negative'\]"):
        tr.load_triplets(bad)
    bad.write_text('{"anchor": "a", "positive": " ", "negative": "n"}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:1: \['positive'\] must be non-empty"):
        tr.load_triplets(bad)
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        tr._precision("fp16", torch.device("cpu"))


SITS = [
    {"situation": "Lending a car to a friend", "references": [
        "In the perspective of Generosity, sharing what you have helps a friend in need.",
        "In the perspective of Risk, an accident could cost money and strain the friendship.",
        "In the perspective of Trust, lending shows confidence in the friend."]},
    {"situation": "Skipping breakfast", "references": [
        "In the perspective of Health, the body needs energy in the morning.",
        "In the perspective of Autonomy, eating habits are a personal choice. Nobody else decides them."]},
]


def perfect_stub():
    """Each reference and its own (opener-stripped, masked) text share one basis vector."""
    table, k = {}, 0
    for row in SITS:
        kws = keywords(row["situation"])
        stripped, _ = prepare_references(row["situation"], row["references"])
        for ref, text in zip(row["references"], stripped):
            table[ref] = basis(k)
            for part in split_sentences(text):  # the candidate side: its sentences, masked
                table[mask_keywords(part, kws)] = basis(k)
            k += 1
    return StubEncoder(table)


class Collapsed:
    """An encoder that calls everything the same: the failure the controls exist to catch."""

    device = torch.device("cpu")

    def encode(self, texts, **kw):
        return torch.ones(len(texts), 8)


def test_matching_metrics_and_their_controls():
    good = ev.evaluate_model(perfect_stub(), [], SITS)
    assert good["match_absolute"] == good["match_relative"] == 1.0
    assert good["loo_false_match"] == 0.0 and good["cross_false_match"] == 0.0 and good["loo_separation"] == 1.0
    bad = ev.evaluate_model(Collapsed(), [], SITS)
    assert bad["match_absolute"] == 1.0  # recall alone cannot tell the two apart ...
    assert bad["loo_false_match"] == 1.0 and bad["cross_false_match"] == 1.0  # ... the controls can
    assert bad["loo_separation"] == 0.5  # all ties: no separation at all
    assert bad["name_accuracy"] == 0.0 and good["counts"] == {"name": 8, "sentence": 1, "restated": 0,
                                                                   "situations": 2}


def test_calibrated_threshold_undoes_an_inflated_encoder():
    """Every perspective pulled 0.7225 towards one shared direction: at 0.7 everything absent is
    "matched"; the calibrated threshold (0.73) removes those false matches and keeps the true ones."""
    b = (1 - 0.85 ** 2) ** 0.5
    blurred = StubEncoder({t: [b * x + (0.85 if i == 31 else 0.0) for i, x in enumerate(v)]
                           for t, v in perfect_stub().table.items()})
    at07 = ev.evaluate_model(blurred, [], SITS)
    assert at07["loo_false_match"] == 1.0 and at07["match_relative"] == 1.0
    cal = ev.calibrate_threshold(blurred, SITS, max_false_match=0.0)
    assert cal["threshold"] == 0.73 and cal["loo_false_match"] == 0.0 and cal["match_relative"] == 1.0
    assert ev.calibrate_threshold(Collapsed(), SITS, 0.0)["threshold"] is None  # nothing separates
    report = ev.evaluate({"base": perfect_stub(), "blurred": blurred}, situations=SITS, calibrate=True)
    assert report["calibrated"]["max_loo_false_match"] == 0.0 and report["calibrated"]["base"]["threshold"] == 0.7
    assert report["calibrated"]["blurred"]["threshold"] == 0.73 and "equal false-match rate" in report["markdown"]


def test_candidate_text_and_sentence_split():
    assert split_sentences("One. Two! Three? 四。五！六？ seven") == ["One.", "Two!", "Three?", "四。", "五！", "六？", "seven"]
    rows = [dict(SITS[0], response="<core perspectives>\nIn the perspective of Risk, crashes cost. Cars break.\n"
                                   "</core perspectives>\n<summary>\nRisk.\n</summary>")] + SITS[1:]
    c = ev.candidate_sets(rows, seed=0)
    assert c["own"][0] == ["In the perspective of Risk crashes cost", "Cars break"]  # core only, masked ("car")
    assert sorted(c["own"][1]) == sorted(["the body needs energy in the morning", "eating habits are a personal choice",
                                         "Nobody else decides them"])
    assert c["dropped"][0] in range(3) and len(c["loo"][0]) == 2 and c["cross"][1] == [
        "sharing what you have helps a friend in need", "an accident could cost money and strain the friendship",
        "lending shows confidence in the friend"]
    assert ev.candidate_sets(rows, seed=0) == c  # seeded


def test_leave_one_out_drops_only_a_perspective_no_other_reference_restates():
    refs = ["In the perspective of Right to property, taking it wrongs the owner.",
            "In the perspective of Respect for property, the owner decides.",  # restates the first (names)
            "In the perspective of Safety, nobody gets hurt.",
            "In the perspective of Honesty, say what you did.",
            "In the perspective of Duty to be honest, say what you did."]  # restates Honesty
    assert ev._unrestated(refs) == [2]
    restated = ev.derived_triplets([{"situation": "case", "references": refs}])["restated"]
    masked = prepare_references("case", refs)[1]
    # twins (0, 1) and (3, 4); 3 and 4 have the same text, so only (0, 1) makes triplets, both
    # ways round, against every reference restating neither 0 nor 1
    assert sorted(restated) == sorted((masked[a], masked[p], masked[n]) for a, p in ((0, 1), (1, 0)) for n in (2, 3, 4))
    assert ev._unrestated(["A is good.", "a is good.", "B is bad."]) == [2]  # unnamed: same text only
    rows = [{"situation": f"case {k}", "references": refs} for k in range(20)]
    c = ev.candidate_sets(rows, seed=0)
    assert set(c["dropped"]) == {2}  # whatever the shuffle, only Safety can be left out
    twins = [{"situation": "s", "references": refs[:2]}]
    assert ev.candidate_sets(twins * 2, seed=0)["dropped"][0] in (0, 1)  # nothing unrestated: any one


def test_evaluate_cli_writes_json_and_markdown(trained, tiny_encoder, tmp_path, capsys):
    out, _ = trained
    sits = tmp_path / "s.jsonl"
    sits.write_text("".join(json.dumps(r) + "\n" for r in SITS))
    report = ev.main(["--model", str(out), "--base", str(tiny_encoder), "--triplets", str(out / "eval_triplets.jsonl"),
                      "--situations", str(sits), "--out", str(tmp_path / "r"), "--calibrate"])
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["calibrated"]["base"]["threshold"] == 0.7  # the base at its own false-match rate
    assert saved["calibrated"]["fine-tuned"].keys() >= {"threshold", "match_relative", "loo_false_match"}
    assert saved["models"].keys() == {"base", "fine-tuned"} == report["models"].keys()
    for metric, _ in ev.METRICS:
        if metric != "restated_accuracy":  # SITS has no two references restating one perspective
            assert all(0.0 <= saved["models"][m][metric] <= 1.0 for m in saved["models"])
    assert saved["models"]["base"]["restated_accuracy"] is None
    # the tiny model learned the topics: held-out triplets separate better than with the random base
    assert saved["models"]["fine-tuned"]["triplets_accuracy"] > saved["models"]["base"]["triplets_accuracy"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.startswith("| metric | base | fine-tuned | change |") and "loo_false_match" in md
    assert "triplets_accuracy" in capsys.readouterr().out


def test_demo_pipeline_with_a_tiny_base(tiny_encoder, tmp_path):
    report = run_demo(tmp_path / "demo", base=str(tiny_encoder), max_steps=2, batch_size=8, progress=False)
    assert report["demo"]["steps"] == 2 and report["demo"]["train_triplets"] > 50
    assert (tmp_path / "demo" / "model" / "model.safetensors").exists()
    assert report["models"]["base"]["counts"]["situations"] == 30
    assert (tmp_path / "demo" / "report" / "report.md").exists()


def test_bundled_demo_data_is_well_formed():
    from opgrpo_fast.data_io import iter_situations

    sits = [r for _, r in iter_situations(data_file("demo_situations.jsonl"))]
    assert len(sits) == 30 and all(4 <= len(r["references"]) <= 6 for r in sits)
    assert all(r.startswith("In the perspective of ") for s in sits for r in s["references"])
    trips = tr.load_triplets(data_file("demo_triplets.jsonl"))
    assert len(trips) == 60 and not {t["situation"] for t in trips} & {s["situation"] for s in sits}


@pytest.mark.slow
def test_minilm_fine_tune_reloads_into_the_reward(tmp_path):
    """The real all-MiniLM-L6-v2 for three steps on the hand-written triplets."""
    out = tmp_path / "minilm"
    summary = tr.train(data_file("demo_triplets.jsonl"), None, out, max_steps=3, batch_size=8, lr=1e-4,
                       eval_split=0.0, logging_steps=1, progress=False)
    assert summary["steps"] == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in summary["log_history"]
                                         if "loss" in h)
    rows = [json.loads(x) for x in data_file("demo_rollouts.jsonl").read_text().splitlines()]
    args = ([r["situation"] for r in rows], [r["completion"] for r in rows], [r["references"] for r in rows])
    base = OvertonReward(bucketed=False, encode_dtype="float32").score(*args)
    fine = OvertonReward(encoder=str(out), bucketed=False, encode_dtype="float32").score(*args)
    assert not torch.equal(fine.total, base.total)
    assert (fine.total - base.total).abs().max() < 0.5  # a few small steps: close to the base, not broken
