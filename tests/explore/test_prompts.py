import pytest

from llm_alloy.explore.prompts import (
    ConversationTemplate,
    ParseLog,
    load_styles,
    parse_domain,
    parse_question,
    parse_tagged,
    parse_verdict,
)
from llm_alloy.explore.quality import is_cut_off, is_degenerate, passes_gates, repetition_coverage


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<domain>Organic Chemistry</domain>", "Organic Chemistry"),
        ("Sure! <domain> Number Theory </domain> is a good one.", "Number Theory"),
        ("<domain>Genetics", "Genetics"),  # cut off before the closing tag
        ("Domain: Ecology\nIt studies ...", "Ecology"),
        ("Science, Math, English\n\nI think that's it", "Science"),
        ("", None),
        ("   \n  ", None),
    ],
)
def test_parse_domain_tolerates_real_outputs(text, expected):
    log = ParseLog()
    assert parse_domain(text, log) == expected
    assert sum(log.counts.values()) == 1


def test_parse_question_rejects_short_refusals_and_counts():
    log = ParseLog()
    long_question = "What is the time complexity of building a binary heap from n unsorted keys, and why?"
    assert parse_question(f"<question>{long_question}</question>", log) == long_question
    assert parse_question(f"Here is a question for you: {long_question}", log) == long_question
    assert parse_question("<question>Why?</question>", log) is None
    assert parse_question("I'm sorry, but I cannot write a question about that topic for you today.", log) is None
    assert parse_question("", log) is None
    over_long = "x" * 100_000
    assert parse_question(over_long, log) == over_long  # kept as is: length limits are the generator's
    assert log.to_dict() == {
        "question:ok": 3, "question:refusal": 1, "question:too short": 2, "question:untagged": 4,
    }


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("<best>2</best>", 3, 1),
        ("<best> [3] </best>", 3, 2),
        ("The best answer is [2] because it is correct.", 3, 1),
        ("[1]\nParis is the capital of France.", 3, 0),
        ("<best>7</best>", 3, None),
        ("I cannot decide between them.", 3, None),
        ('{"best": "two"}', 3, None),
        ("", 2, None),
        ("9" * 5000, 3, None),
    ],
)
def test_parse_verdict(text, n, expected):
    log = ParseLog()
    assert parse_verdict(text, n, log) == expected
    assert sum(log.counts.values()) == 1


def test_parse_tagged_reference():
    log = ParseLog()
    assert parse_tagged("Q? <answer> 42 </answer>", "answer", log) == "42"
    assert parse_tagged("no reference here", "answer", log) is None
    assert log.to_dict() == {"answer:missing": 1, "answer:ok": 1}


def test_templates_render_every_placeholder():
    for name, values in [
        ("sprout", {"level_instruction": "a main domain.", "existing": "none"}),
        ("question", {"path": "Mathematics > Algebra", "style": "casual", "extra": ""}),
        ("judge", {"question": "Q?", "answers": "[1]\nA"}),
    ]:
        conversation = ConversationTemplate(name).render(**values)
        assert conversation[-1]["role"] == "user"
        assert all("$" not in turn["content"] for turn in conversation)
        with pytest.raises(KeyError):
            ConversationTemplate(name).render()
    styles = load_styles()
    assert len(styles) == 6 and any("$tone" in s for s in styles)


def test_quality_gates():
    assert is_degenerate("the answer is " + "very " * 200)
    assert not is_degenerate("Paris is the capital of France. It lies on the Seine and has many museums.")
    assert repetition_coverage("") == 0.0
    assert is_cut_off("An answer that stops", "length")
    assert is_cut_off("```python\nprint(1)\n", "stop")
    assert not is_cut_off("```python\nprint(1)\n```", "stop")
    assert not passes_gates("   ", "stop")
    assert passes_gates("A complete, fluent answer.", "stop")
