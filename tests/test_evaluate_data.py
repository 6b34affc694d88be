"""Evaluation inputs and bookkeeping: data errors name file and line, the response log's crash
repair, coverage numbers from exact stub embeddings, and the report table."""
import json

import pytest

from opgrpo_fast import OvertonReward
from opgrpo_fast.data_io import DataError
from opgrpo_fast.evaluate import EvalItem, load_items
from opgrpo_fast.evaluate.__main__ import main
from opgrpo_fast.evaluate.coverage import coverage_scores
from opgrpo_fast.evaluate.generate import GenerationConfig, ResponseLog, generate_responses, read_responses
from opgrpo_fast.evaluate.report import flat_metrics, markdown_table
from stub_encoder import StubEncoder, basis

R1 = "In the perspective of Care, help people in need."
R2 = "In the perspective of Liberty, let people choose."
OTHER = "In the perspective of Cost, it is expensive."


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("bad, line, message", [
    ({"situation": "s"}, 2, r"missing field\(s\) \['references'\]"),
    ({"references": [R1]}, 2, r"missing field\(s\) \['situation'\]"),
    ({"situation": "s", "references": []}, 2, "'references' must be a non-empty"),
    ({"situation": "s", "references": ["  "]}, 2, "'references' must be a non-empty"),
    ({"situation": " ", "references": [R1]}, 2, "'situation' must be a non-empty string"),
    ({"id": "a", "situation": "s", "references": [R1]}, 2, "id 'a' already used on line 1"),
    ("{not json", 2, "not valid JSON"),
])
def test_bad_jsonl_rows_name_file_and_line(tmp_path, bad, line, message):
    path = write_lines(tmp_path / "d.jsonl", [{"id": "a", "situation": "ok", "references": [R1]}, bad])
    with pytest.raises(DataError, match=rf"d\.jsonl:{line}: {message}"):
        load_items(path)


def test_csv_rows(tmp_path):
    ok = tmp_path / "ok.csv"
    ok.write_text('situation,references\nfirst,"' + R1 + '\n' + R2 + '"\nsecond,"' +
                  json.dumps([R1, OTHER]).replace('"', '""') + '"\n')
    items = load_items(ok)
    assert [it.references for it in items] == [(R1, R2), (R1, OTHER)]
    assert items[0].id == "ok.csv:3"  # no id column: file:line (where data_io's reader ends the record)
    missing = tmp_path / "missing.csv"
    missing.write_text("situation,answer\nx,y\n")
    with pytest.raises(DataError, match=r"missing\.csv:1: missing column\(s\) \['references'\]"):
        load_items(missing)
    empty = tmp_path / "empty.csv"
    empty.write_text("situation,references\nfirst,\"" + R1 + "\"\nsecond,\n")
    with pytest.raises(DataError, match=r"empty\.csv:3: 'references'"):
        load_items(empty)


def test_cli_reports_data_errors_with_file_and_line(tmp_path, capsys):
    data = write_lines(tmp_path / "d.jsonl", [{"situation": "ok", "references": [R1]}, {"situation": "x"}])
    assert main(["--data", str(data), "--responses", str(data), "--out", str(tmp_path / "o")]) == 2
    assert f"{data}:2: missing field(s) ['references']" in capsys.readouterr().err
    assert main(["--data", str(data), "--out", str(tmp_path / "o")]) == 2  # neither --model nor --responses
    assert "pass --model" in capsys.readouterr().err


def test_responses_file_errors_and_crash_repair(tmp_path):
    ok = {"id": "a", "response": "x"}
    bad = write_lines(tmp_path / "r.jsonl", [ok, "{cut", ok])
    with pytest.raises(DataError, match=r"r\.jsonl:2: not valid JSON"):
        read_responses(bad, repair=True)  # only a cut *last* line is crash debris
    nofield = write_lines(tmp_path / "n.jsonl", [{"id": "a", "text": "x"}])
    with pytest.raises(DataError, match=r"n\.jsonl:1: a response row needs"):
        read_responses(nofield)
    cut = tmp_path / "c.jsonl"
    cut.write_text(json.dumps(ok) + "\n" + '{"id": "b", "respo')
    with pytest.raises(DataError, match=r"c\.jsonl:2"):
        read_responses(cut)
    assert read_responses(cut, repair=True) == {"a": ok}
    assert cut.read_text() == json.dumps(ok) + "\n"


def test_responses_must_belong_to_the_data(tmp_path, capsys):
    data = write_lines(tmp_path / "d.jsonl", [{"id": "a", "situation": "one", "references": [R1]}])
    other = write_lines(tmp_path / "r1.jsonl", [{"id": "zz", "response": "x"}])
    assert main(["--data", str(data), "--responses", str(other), "--out", str(tmp_path / "o"), "--no-nli"]) == 2
    assert "no response id matches a data id" in capsys.readouterr().err
    wrong = write_lines(tmp_path / "r2.jsonl", [{"id": "a", "situation": "two", "response": "x"}])
    assert main(["--data", str(data), "--responses", str(wrong), "--out", str(tmp_path / "o"), "--no-nli"]) == 2
    assert "wrong --data file?" in capsys.readouterr().err


def test_tag_gated_regeneration_and_log(tmp_path):
    seen, calls = {}, []

    def scripted(prompts):  # 'alpha' is tagged at once, 'beta' on its third try, 'gamma' never
        calls.append(len(prompts))
        out = []
        for p in prompts:
            seen[p] = n = seen.get(p, 0) + 1
            ok = "alpha" in p or ("beta" in p and n >= 3)
            out.append((tagged(R1) if ok else "no tags here", 4, True))
        return out

    items = [EvalItem("a", "alpha", (R1,)), EvalItem("b", "beta", (R1,)), EvalItem("c", "gamma", (R1,))]
    path = tmp_path / "r.jsonl"
    rows = generate_responses(items, scripted, path, GenerationConfig(batch_size=3, max_retries=2), model_name="m",
                              log=lambda m: None)
    assert {k: (r["attempts"], r["tag_ok"]) for k, r in rows.items()} == {"a": (1, True), "b": (3, True),
                                                                           "c": (3, False)}
    assert rows["c"]["response"] == "no tags here"  # kept as is after the last retry
    assert calls == [3, 2, 2]  # only the untagged ones are regenerated, together
    assert read_responses(path) == rows
    hand = tmp_path / "hand.jsonl"
    hand.write_text(json.dumps({"id": "x", "response": "y"}))  # no final newline
    with ResponseLog(hand) as log:
        log.write({"id": "z", "response": "w"})
    assert set(read_responses(hand)) == {"x", "z"}


def tagged(*lines):
    return "<core perspectives>\n" + "\n".join(lines) + "\n</core perspectives>\n<summary>\nCare, Liberty\n</summary>"


def test_coverage_numbers_from_exact_embeddings():
    enc = StubEncoder({R1: basis(0), R2: basis(1), OTHER: basis(5)}, fallback=False)
    reward = OvertonReward(encoder=enc, mask_keywords=False)
    items = [EvalItem(str(i), "topic", (R1, R2)) for i in range(3)]
    responses = [tagged(R1, R2), tagged(R1, OTHER), R2 + "\n" + R2]  # all, half, untagged duplicate
    s, rows = coverage_scores(reward, items, responses, [10, 20, None])
    assert [r["matched"] for r in rows] == [2, 1, 1] and [r["all_matched"] for r in rows] == [True, False, False]
    assert s["relative_matching"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert s["absolute_matching"] == pytest.approx(1 / 3)
    assert s["format_pass_rate"] == pytest.approx(2 / 3)
    assert s["uniqueness_rate"] == pytest.approx((1 + 1 + 0.5) / 3)  # the repeated line is redundant
    assert s["mean_tokens"] == 15 and s["match_threshold"] == 0.7 and s["n"] == 3


def test_markdown_table_formats_and_drops_unmeasured_rows():
    res = {"nli": {"accuracy": 0.5, "mean": 0.41234, "std": 0.1, "stderr": 0.05},
           "coverage": {"relative_matching": 0.25, "mean_tokens": 412.4}, "judge": {}}
    m = flat_metrics(res)
    assert m["judge_overall"] is None and m["nli_accuracy"] == 0.5
    table = markdown_table([("a|b", m), ("empty", flat_metrics({}))])
    assert table.splitlines()[0] == "| metric | a/b | empty |"
    assert "| NLI accuracy (score > 0.33) | 50.0% | – |" in table and "| NLI mean score | 0.412 | – |" in table
    assert "| Mean tokens | 412 | – |" in table and "Judge" not in table and "Uniqueness" not in table
