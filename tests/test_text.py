"""Text rules of the Overton reward (rules 1, 2, 3, 6), table-driven."""
import pytest

from opgrpo_fast.config import PROMPT_TEMPLATE, situation_from_prompt
from opgrpo_fast.text import (format_score, keywords, mask_keywords, normalize_references, split_perspectives,
                              stopwords, strip_opener, tag_gate)

GOOD = "<core perspectives>\nIn the perspective of A, x.\n</core perspectives>\n\n<summary>\nA matters.\n</summary>"


@pytest.mark.parametrize("text, passed, body", [
    (GOOD, True, "In the perspective of A, x."),
    ("  <CORE   Perspectives> a </core perspectives><summary> s </summary>  \n", True, "a"),
    ("<core perspectives>a</core perspectives> trailing <summary>s</summary>", False, None),  # text in the gap
    ("<core perspectives>a</core perspectives><summary>s</summary> after", False, None),
    ("<core perspectives>  </core perspectives><summary>s</summary>", False, None),  # empty core
    ("<core perspectives>a</core perspectives><summary> \n </summary>", False, None),  # empty summary
    ("<core perspectives>a</core perspectives>", False, None),  # no summary
    ("  plain answer  ", False, "plain answer"),
    ("<core perspectives>a\nb</core perspectives>\n<summary>s</summary>", True, "a\nb"),  # DOTALL
])
def test_tag_gate(text, passed, body):
    ok, got = tag_gate(text)
    assert ok is passed
    assert got == (body if body is not None else text.strip())


@pytest.mark.parametrize("text, expected", [
    ("In the perspective of A, x.\nFrom the perspective of B, y.", ["In the perspective of A, x.", "From the perspective of B, y."]),
    ("Intro line\nIn the perspective of A, x.", ["Intro line", "In the perspective of A, x."]),
    ("in the perspective of A, x.\nfrom THE perspective of B, y.", ["in the perspective of A, x.", "from THE perspective of B, y."]),
    ("A says: In the perspective of A, x.", ["A says: In the perspective of A, x."]),  # opener mid-line: no split
    ("In the perspective of A, x.\n\n\nIn the perspective of B, y.\n", ["In the perspective of A, x.", "In the perspective of B, y."]),
    ("In the perspective of A, x\ncontinued", ["In the perspective of A, x\ncontinued"]),
    ("", []),
    ("  \n ", []),
])
def test_split(text, expected):
    assert split_perspectives(text) == expected


def test_references_list_or_string_agree():
    refs = ["In the perspective of A, x.", "In the perspective of B, y."]
    assert normalize_references(refs) == normalize_references("\n".join(refs)) == refs
    with pytest.raises(ValueError, match="strings"):
        normalize_references(["ok", 3])
    with pytest.raises(ValueError, match="string or a list"):
        normalize_references(None)


def test_stopwords_shipped():
    sw = stopwords()
    assert len(sw) == 179 and {"the", "of", "and", "t"} <= sw


def test_keywords_and_masking():
    kws = keywords("Drinking alcohol as a Christian, isn't it 2 bad?")
    assert kws == {"drinking", "alcohol", "christian", "isn", "2", "bad"} - stopwords()
    assert "isn" not in kws  # a stopword in the shipped list
    assert mask_keywords("In the perspective of Faith, drinking ALCOHOL is fine.", kws) == \
        "In the perspective of Faith [KW] [KW] is fine"
    assert mask_keywords("Untouched, text!", frozenset()) == "Untouched, text!"  # no keywords: no masking


def test_prompt_template_stripped():
    chat = "<|im_start|>user\n" + PROMPT_TEMPLATE.format(situation="Eating meat") + "<|im_end|>\n<|im_start|>assistant\n"
    assert situation_from_prompt(chat) == "Eating meat"
    assert situation_from_prompt("Eating meat") == "Eating meat"


def test_strip_opener():
    assert strip_opener("In the perspective of Care, helping is good.") == "helping is good."
    assert strip_opener("no opener here") == "no opener here"


def _answer(lines, summary):
    return "<core perspectives>\n" + "\n".join(lines) + "\n</core perspectives>\n<summary>\n" + summary + "\n</summary>"


P = ["In the perspective of Care, a.", "In the perspective of Liberty, b.", "In the perspective of Duty, c."]


@pytest.mark.parametrize("text, expected", [
    (_answer(P, "care, liberty and duty"), 2.0),                      # all openers, full summary
    (_answer(P, "care and liberty"), 1.5),                            # 2/3 ≥ .5 → −.5
    (_answer(P, "care only"), 1.25),                                   # 1/3 ≥ .25 → −.75
    (_answer(P, "nothing"), 1.0),                                      # 0 → −1
    (_answer(P + [P[0]], "care liberty duty"), 1.0),                   # one repeated segment + repeated name → −1
    (_answer(P + ["In the perspective of care, other."], "care liberty duty"), 1.5),  # repeated name only
    (_answer(["In the perspective of Care, a.", "plain b", "plain c"], "care"), 2.0),  # plain lines join: 1 segment
    ("no tags, no openers", 0.0),
    (_answer(["x"], "s"), 0.0),                                        # 0% openers, no names
    ("<core perspectives></core perspectives><summary>s</summary>", 0.0),  # no segments
])
def test_format_score(text, expected):
    assert format_score(text) == pytest.approx(expected)


def test_format_share_edges():
    # "plain b\nplain c" has no opener at a line start, so the core is ONE segment with the opener → base 2
    assert format_score(_answer(["In the perspective of Care, a.", "plain b"], "care")) == 2.0
    # 3 segments, 1 with the opener (33% ≥ 30%) → base 1; the name "care" is in the summary
    text = _answer(["Intro.", "In the perspective of Care, a."], "care")
    assert split_perspectives("Intro.\nIn the perspective of Care, a.") == ["Intro.", "In the perspective of Care, a."]
    assert format_score(text) == 1.0  # 1 of 2 segments = 50%: base 1
    three = _answer(["Intro.\nIn the perspective of Care, a.\nIn the perspective of Care, a."], "care")
    assert format_score(three) == 0.0  # 2/3 → base 1, minus .5 repeat segment, minus .5 repeat name
