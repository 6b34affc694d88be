"""Triplet building: selection rule, resumability, input errors (file:line), the CLI."""
import json

import pytest
import torch

from opgrpo_fast.data_io import DataError, iter_situations
from opgrpo_fast.similarity import build_triplets as bt
from opgrpo_fast.similarity.common import prepare_references
from opgrpo_fast.similarity.judges import HeuristicJudge, Judge
from opgrpo_fast.text import keywords
from stub_encoder import StubEncoder, at_cos, basis

SITUATION = "Borrowing a bike without asking"
REFS = [
    "In the perspective of Property, borrowing a bike without asking ignores the owner's property rights.",
    "From the perspective of Ownership, riding a bike that is not yours ignores the owner's rights.",
    "In the perspective of Trust, friends may lend things freely, so asking is a formality.",
    "In the perspective of Safety, an unchecked bike may have faulty brakes.",
    "In the perspective of Convenience, the ride saves time when in a hurry.",
]


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    from opgrpo_fast.similarity.common import build_tiny_encoder

    return build_tiny_encoder(tmp_path_factory.getbasetemp() / "tiny_encoder")


class ScriptedJudge(Judge):
    """Says yes to the pairs of stripped sentences in ``yes``; records every call."""

    name = "scripted"

    def __init__(self, yes=()):
        self.yes = {frozenset(p) for p in yes}
        self.calls = []

    def judge(self, pairs, *, cosines=None, keywords=None, names=None):
        self.calls.append((list(pairs), list(cosines or []), list(keywords or []), list(names or [])))
        return [frozenset(p) in self.yes for p in pairs]


def stub_for(situation, refs, vectors):
    """A StubEncoder mapping each reference's masked sentence to the given vector."""
    _, masked = prepare_references(situation, refs)
    return StubEncoder(dict(zip(masked, vectors)), fallback=False)


# cos(0,1)=0.9, cos(0,2)=0.8, cos(1,2)=0.72, 3 and 4 orthogonal to everything
VECTORS = [basis(0), at_cos(0, 0.9, 1), at_cos(0, 0.8, 2), basis(3), basis(4)]


def sims_of(vectors):
    v = torch.nn.functional.normalize(torch.tensor(vectors), dim=-1)
    return v @ v.T


def test_select_triplet_rule():
    s = sims_of(VECTORS)
    assert bt.candidate_pairs(s) == [pytest.approx((0.9, 0, 1)), pytest.approx((0.8, 0, 2))]
    # (0,1) yes, (0,2) no: anchor 0 (its negative 2 at 0.8 beats anchor 1's 0.72), judged negative
    pick = bt.select_triplet(s, {(0, 1): True, (0, 2): False})
    assert (pick["a"], pick["p"], pick["n"], pick["negative_judged"]) == (0, 1, 2, True)
    assert pick["cos_pos"] == pytest.approx(0.9) and pick["cos_neg"] == pytest.approx(0.8)
    # both candidates "the same": 2 cannot be a negative; the best left is under min_cos (not judged)
    pick = bt.select_triplet(s, {(0, 1): True, (0, 2): True})
    assert pick["n"] in (3, 4) and not pick["negative_judged"] and pick["cos_neg"] == pytest.approx(0.0, abs=1e-6)
    # the most similar *yes* pair wins even when a more similar pair is judged no
    pick = bt.select_triplet(s, {(0, 1): False, (0, 2): True})
    assert {pick["a"], pick["p"]} == {0, 2} and pick["n"] == 1
    assert bt.select_triplet(s, {}) == "no candidate pair judged the same"
    assert bt.select_triplet(sims_of([basis(0), basis(1), basis(2)]), {}).startswith("no pair with cosine")
    assert bt.select_triplet(s[:2, :2], {(0, 1): True}) == "fewer than 3 references"
    same3 = sims_of([basis(0), basis(0), basis(0)])
    assert bt.select_triplet(same3, {(0, 1): True, (0, 2): True, (1, 2): True}).startswith("every other")


def test_build_record_masks_and_judge_sees_stripped_text(tmp_path):
    data = tmp_path / "s.jsonl"
    data.write_text(json.dumps({"id": "x1", "situation": SITUATION, "references": REFS}) + "\n")
    stripped, masked = prepare_references(SITUATION, REFS)
    judge = ScriptedJudge(yes=[(stripped[0], stripped[1])])
    stats = bt.run(data, tmp_path / "t.jsonl", judge, stub_for(SITUATION, REFS, VECTORS), progress=False)
    assert stats["written"] == 1 and stats["negative_judged"] == 1
    row = json.loads((tmp_path / "t.jsonl").read_text())
    assert (row["anchor"], row["positive"], row["negative"]) == (masked[0], masked[1], masked[2])
    assert "[KW]" in row["anchor"] and "perspective" not in row["anchor"]  # "bike" masked, opener gone
    assert row["id"] == "x1" and row["line"] == 1 and row["judge"] == "scripted"
    pairs, cosines, kws, names = judge.calls[0]
    assert pairs == [(stripped[0], stripped[1]), (stripped[0], stripped[2])]  # only pairs >= 0.75, unmasked
    assert cosines == pytest.approx([0.9, 0.8]) and kws[0] == keywords(SITUATION)
    assert names == [("Property", "Ownership"), ("Property", "Trust")]  # each pair's perspective names


def test_resume_skips_done_and_recovers_a_torn_line(tmp_path):
    data = tmp_path / "s.jsonl"
    rows = [{"situation": f"{SITUATION} {k}", "references": REFS} for k in range(3)]
    rows.append({"situation": "Only two views", "references": REFS[:2]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    enc = StubEncoder()  # hash vectors: no pair reaches 0.75 unless we script it
    for r in rows[:3]:
        enc.table.update(zip(prepare_references(r["situation"], r["references"])[1], VECTORS))
    out = tmp_path / "t.jsonl"
    first = bt.run(data, out, HeuristicJudge(min_cos=0.85, min_overlap=0.0), enc, limit=2, progress=False)
    assert first["written"] == 2 and first["already_done"] == 0
    second = bt.run(data, out, HeuristicJudge(min_cos=0.85, min_overlap=0.0), enc, progress=False)
    assert second["already_done"] == 2 and second["written"] == 1 and second["rejected: fewer than 3 references"] == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and len({json.loads(x)["situation"] for x in lines}) == 3
    third = bt.run(data, out, HeuristicJudge(), enc, progress=False)  # rejected ones are remembered too
    assert third["already_done"] == 4 and third["written"] == third["rejected"] == 0
    # a killed run's half-written last line is dropped, that situation redone
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    fourth = bt.run(data, out, HeuristicJudge(min_cos=0.85, min_overlap=0.0), enc, progress=False)
    assert fourth["written"] == 1 and len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("content, message", [
    ('{"situation": "a", "references": ["x"]}\n{not json\n', r"s\.jsonl:2: not valid JSON"),
    ('[1, 2]\n', r"s\.jsonl:1: expected a JSON object"),
    ('{"situation": "a"}\n', r"s\.jsonl:1: missing field\(s\) \['references'\]"),
    ('{"situation": "a", "references": []}\n', r"s\.jsonl:1: 'references' must be a non-empty"),
    ('{"situation": "a", "references": ["  "]}\n', r"s\.jsonl:1: 'references' must be a non-empty"),
    ('{"situation": "", "references": ["x"]}\n', r"s\.jsonl:1: 'situation' must be a non-empty string"),
])
def test_malformed_jsonl_fails_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        list(iter_situations(path))


def test_skip_mode_warns_and_continues(tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    good = {"situation": "a", "references": ["In the perspective of A, x.\nIn the perspective of B, y."]}
    path.write_text(json.dumps(good) + "\n{broken\n" + json.dumps({"situation": "b", "references": []}) + "\n"
                    + json.dumps({**good, "situation": "c"}) + "\n")
    got = list(iter_situations(path, on_error="skip"))
    assert [(line, r["situation"]) for line, r in got] == [(1, "a"), (4, "c")]
    assert got[0][1]["references"] == ["In the perspective of A, x.", "In the perspective of B, y."]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("warning: ") and "s.jsonl:2:" in err[0] and "(skipped)" in err[0]
    assert "s.jsonl:3:" in err[1]


def test_csv_prompt_answer_adaptor_and_errors(tmp_path):
    path = tmp_path / "s.csv"
    answer = "In the perspective of A, x.\nIn the perspective of B, y.\nIn the perspective of C, z."
    path.write_text('prompt,answer\n"Sit one","' + answer + '"\n"Sit two",""\n')
    with pytest.raises(DataError, match=r"s\.csv:5: 'references' must be a non-empty"):
        list(iter_situations(path))
    got = list(iter_situations(path, on_error="skip", warn=lambda m: None))
    assert got[0][1]["situation"] == "Sit one" and len(got[0][1]["references"]) == 3
    # the paper's instruction prompt and a tagged answer with an intro line
    from opgrpo_fast.config import PROMPT_TEMPLATE

    tagged = tmp_path / "p.jsonl"
    tagged.write_text(json.dumps({"prompt": PROMPT_TEMPLATE.format(situation="Eating meat"), "answer":
                                  "<core perspectives>\nHere are views:\n" + answer + "\n</core perspectives>\n"
                                  "<summary>\nA, B and C.\n</summary>"}) + "\n")
    (_, row), = iter_situations(tagged)
    assert row["situation"] == "Eating meat" and row["references"] == answer.split("\n")
    bad = tmp_path / "b.csv"
    bad.write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match=r"b\.csv:1: missing column\(s\) \['prompt'\]"):
        list(iter_situations(bad, on_error="skip"))  # a file-level error even in skip mode
    with pytest.raises(FileNotFoundError):
        list(iter_situations(tmp_path / "nope.jsonl"))


def test_cli_runs_twice_without_duplicates(tmp_path, tiny_encoder, capsys):
    data = tmp_path / "s.csv"
    lines = ["prompt,answer"] + [f'"{SITUATION} {k}","' + "\n".join(REFS) + '"' for k in range(4)]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "t.jsonl"
    argv = ["--data", str(data), "--out", str(out), "--base", str(tiny_encoder), "--judge", "heuristic", "--heuristic-min-cos", "-1",
            "--heuristic-min-overlap", "0.3", "--min-cos", "-1", "--chunk", "3"]  # yes = the (0, 1) word overlap
    first = bt.main(argv)
    assert first["written"] == 4
    second = bt.main(argv)
    assert second["already_done"] == 4 and second["written"] == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and {r["situation"] for r in rows} == {f"{SITUATION} {k}" for k in range(4)}
    masked = prepare_references(f"{SITUATION} 0", REFS)[1]
    assert {rows[0]["anchor"], rows[0]["positive"]} == {masked[0], masked[1]} and rows[0]["negative_judged"]
    assert "4 already done" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bt.main(["--help"])


def test_cli_default_names_judge(tmp_path, tiny_encoder):
    refs = ["In the perspective of Right to property, the owner decides who rides the bike.",
            "In the perspective of Trust, friends lend freely.",
            "In the perspective of Respect for property, a bike is not yours to take.",  # same perspective as 0
            "In the perspective of Safety, brakes may fail."]
    data = tmp_path / "s.jsonl"
    data.write_text(json.dumps({"situation": SITUATION, "references": refs}) + "\n")
    stats = bt.main(["--data", str(data), "--out", str(tmp_path / "t.jsonl"), "--base", str(tiny_encoder),
                     "--min-cos", "-1"])  # every pair reaches the judge; only the names decide
    row = json.loads((tmp_path / "t.jsonl").read_text())
    masked = prepare_references(SITUATION, refs)[1]
    assert stats["written"] == 1 and row["judge"] == "names"
    assert {row["anchor"], row["positive"]} == {masked[0], masked[2]} and row["negative"] in (masked[1], masked[3])


def test_repeated_reference_is_not_its_own_positive(tmp_path):
    data = tmp_path / "s.jsonl"
    data.write_text(json.dumps({"situation": SITUATION, "references": [REFS[0], REFS[0], REFS[2], REFS[3]]}) + "\n")
    judge = ScriptedJudge(yes=[(s, s) for s in prepare_references(SITUATION, REFS)[0]])
    stats = bt.run(data, tmp_path / "t.jsonl", judge, StubEncoder(), progress=False)  # hash vectors: ~orthogonal
    assert stats["written"] == 0 and stats["rejected: no pair with cosine >= 0.75"] == 1
