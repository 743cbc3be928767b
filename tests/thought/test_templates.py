"""Thought templates: built by a real summariser from training queries only, stored, resumed,
retrieved (same task first, then cosine) and injected before a new query."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from llm_alloy.config import ConfigError, parse_config
from llm_alloy.logs.matrix import split_of
from llm_alloy.logs.schema import LogRecord, render_prompt
from llm_alloy.models.base import Backend
from llm_alloy.models.types import Completion, GenerationParams, sample_indices
from llm_alloy.thought.pipeline import TemplatesConfig, apply_templates, build_from_config
from llm_alloy.thought.templates import (
    EMBEDDINGS_FILE,
    REPORT_FILE,
    SOLUTION_CHARS,
    TEMPLATES_FILE,
    TemplateStore,
    TemplateStoreError,
    ThoughtTemplate,
    build_templates,
    inject,
    parse_template,
    retrieve,
    summary_conversation,
)

FAST = GenerationParams(max_new_tokens=16, temperature=0.2)


def ids_in(split: str, n: int, prefix: str = "q") -> list[str]:
    found = [f"{prefix}{i}" for i in range(500) if split_of(f"{prefix}{i}") == split]
    return found[:n]


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in encoder: hashed word counts, so shared words mean similar vectors."""
    vectors = np.zeros((len(texts), 512), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 512] += 1
    return vectors


def query_rows(query_id: str, task: str, query: str, ground_truth: str, scores=(1.0, 1.0, 0.0)) -> list[LogRecord]:
    arms = [("a", "direct", 2.0), ("a", "think", 1.0), ("b", "direct", 0.5)]
    return [
        LogRecord(
            query_id=query_id, arm=model if style == "direct" else f"{model}_{style}", model=model, prompt_style=style,
            task=task, task_description=f"The {task} task.", query=query, prompt=render_prompt(query, style),
            ground_truth=ground_truth, metric="numeric", response=f"{model}/{style} reasons about {query} and answers.",
            performance=score, cost=cost,
        )
        for (model, style, cost), score in zip(arms, scores)
    ]


def make_logs(n_train: int = 5, n_test: int = 2) -> tuple[list[LogRecord], list[str], list[str]]:
    """Training queries (the last with no correct response) and test queries."""
    train, test = ids_in("train", n_train + 1), ids_in("test", n_test)
    records = []
    for i, query_id in enumerate(train):
        scores = (0.0, 0.0, 0.0) if i == n_train else (1.0, 1.0, 0.0)
        records += query_rows(query_id, "arith", f"What is {i} plus {i + 1}?", str(2 * i + 1), scores)
    for i, query_id in enumerate(test):
        records += query_rows(query_id, "arith", f"Secret test question {i}?", "7")
    return records, train, test


class Recording(Backend):
    """The real model behind a counter of every (conversation, sample index) it is asked for; it can
    die on its N-th call (a killed build) or rewrite answers (a summariser that misbehaves)."""

    def __init__(self, inner: Backend, die_on_call: int | None = None, rewrite=None) -> None:
        self.inner, self.name, self.model_id = inner, inner.name, inner.model_id
        self.die_on_call, self.rewrite = die_on_call, rewrite
        self.asked: list[tuple[str, int]] = []
        self.calls = 0

    @property
    def identity(self) -> str:
        return self.inner.identity

    def generate(self, conversations, params, sample_index=0, on_result=None):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt
        indices = sample_indices(sample_index, len(conversations))
        self.asked += [(json.dumps(c), i) for c, i in zip(conversations, indices)]
        completions = self.inner.generate(conversations, params, sample_index)
        if self.rewrite:
            completions = [self.rewrite(c, i, done) for c, i, done in zip(conversations, indices, completions)]
        for position, completion in enumerate(completions):
            if on_result:
                on_result(position, completion)
        return completions

    def score(self, prompts, continuations, top_logprobs=0):
        return self.inner.score(prompts, continuations, top_logprobs)


# -- building ------------------------------------------------------------------------------------


def test_build_summarises_training_queries_only_and_the_store_reloads(tiny_backend, tmp_path):
    records, train, test = make_logs()
    store, report = build_templates(
        records, tiny_backend, tmp_path, k=2, embed=bag_of_words, encoder="bow", params=FAST, batch_size=2, progress=False
    )
    assert report.train_queries == len(train) and report.refused_queries == len(test)
    assert report.without_top_responses == 1
    assert report.built + report.skipped == len(train) - 1 and report.built > 0
    assert {t.query_id for t in store.templates} <= set(train[:-1])
    for template in store.templates:
        assert template.sources == ["a_think", "a"]  # the two correct arms, the cheaper first; b scored 0
        assert template.task == "arith" and template.template.strip()
        assert "Secret test question" not in template.query
    for name in (TEMPLATES_FILE, EMBEDDINGS_FILE, REPORT_FILE):
        assert (tmp_path / name).exists()
    assert json.loads((tmp_path / REPORT_FILE).read_text())["built"] == report.built

    loaded = TemplateStore.load(tmp_path)
    assert loaded.templates == store.templates and loaded.encoder == "bow"
    np.testing.assert_allclose(loaded.embeddings, store.embeddings)
    expected = bag_of_words([t.query for t in store.templates])
    np.testing.assert_allclose(loaded.embeddings, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-6)


def test_a_killed_build_resumes_without_asking_anything_twice(tiny_backend, tmp_path):
    records, train, _ = make_logs(n_train=6)
    first = Recording(tiny_backend, die_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        build_templates(records, first, tmp_path, embed=bag_of_words, encoder="bow", params=FAST, batch_size=2, progress=False)
    written = (tmp_path / TEMPLATES_FILE).read_text().splitlines()
    assert first.asked and len(written) <= 2

    second = Recording(tiny_backend)
    store, report = build_templates(
        records, second, tmp_path, embed=bag_of_words, encoder="bow", params=FAST, batch_size=2, progress=False
    )
    assert second.asked and not set(first.asked) & set(second.asked)
    assert len(second.asked) == len(set(second.asked))
    assert report.reused == len(written)
    assert report.reused + report.built + report.skipped == len(train) - 1
    assert len({t.query_id for t in store.templates}) == len(store.templates) == report.reused + report.built

    third = Recording(tiny_backend)
    again, report = build_templates(records, third, tmp_path, embed=bag_of_words, encoder="bow", params=FAST, progress=False)
    assert third.calls == 0 and report.built == 0  # skipped ones too: both their attempts are cached
    assert again.templates == store.templates


def test_degenerate_summaries_are_retried_once_then_skipped_and_counted(tiny_backend, tmp_path):
    records, train, _ = make_logs(n_train=3)
    never, once = "What is 0 plus 1?", "What is 1 plus 2?"

    def misbehave(conversation, sample_index, completion):
        question = conversation[-1]["content"]
        if never in question or (once in question and sample_index == 0):
            return Completion("   ", "stop", completion.usage)
        return Completion("Add the two numbers together, then state the sum as a plain number.", "stop", completion.usage)

    backend = Recording(tiny_backend, rewrite=misbehave)
    store, report = build_templates(records, backend, tmp_path, embed=bag_of_words, encoder="bow", params=FAST, progress=False)
    assert report.retried == 2 and report.skipped == 1 and report.built == 2
    assert report.rejections == {"empty": 3}
    assert [i for _, i in backend.asked] == [0, 0, 0, 1, 1]
    assert {t.query for t in store.templates} == {once, "What is 2 plus 3?"}


def test_build_from_a_config_and_a_log_file(tmp_path):
    from llm_alloy.logs.io import write_logs

    records, train, _ = make_logs(n_train=2, n_test=1)
    write_logs(records, tmp_path / "logs.jsonl")
    config = parse_config(
        {
            "models": [{"name": "tiny", "backend": "local", "path": "tiny-llama"}],
            "logs": str(tmp_path / "logs.jsonl"), "summariser": "tiny", "criterion": "perf", "k": 1,
            "encoder": "minilm-l6", "generation": FAST.model_dump(),
        },
        TemplatesConfig,
    )
    store, report = build_from_config(config, tmp_path / "store", progress=False)
    assert report.train_queries == 3 and report.built + report.skipped == 2
    assert store.encoder == "minilm-l6" and store.embeddings.shape[1] == 384
    assert all(t.sources == ["a_think"] for t in store.templates)


def test_config_errors_name_the_field():
    base = {"models": [{"name": "tiny", "backend": "local", "path": "tiny-llama"}], "logs": "x.jsonl"}
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        parse_config({**base, "summariser": "nope"}, TemplatesConfig)
    with pytest.raises(ConfigError, match="criterion"):
        parse_config({**base, "summariser": "tiny", "criterion": "best"}, TemplatesConfig)


# -- the summariser's prompt and output ------------------------------------------------------------


def test_summary_prompt_shows_the_solutions_cut_short_but_never_the_ground_truth():
    long_solution = "step " * 400 + "TAIL-MARKER"
    conversation = summary_conversation("What is 6 x 7?", "Arithmetic.", ["6 x 7 = 42.", long_solution])
    request = conversation[-1]["content"]
    assert conversation[-1]["role"] == "user" and "What is 6 x 7?" in request and "Arithmetic." in request
    assert "Solution 1:\n6 x 7 = 42." in request and "Solution 2:" in request
    assert "TAIL-MARKER" not in request and long_solution[:SOLUTION_CHARS] in request
    assert "ground truth" not in json.dumps(conversation).lower()


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ("", "empty"),
        ("  \n ", "empty"),
        ("Add them.", "too short"),
        ("sum sum sum sum sum sum sum sum sum sum sum sum", "repetitive"),
        ("First multiply six by seven to get forty two, which is the product.", "copy of a solution or the example"),
        ("Multiply the two factors; the answer here is 42, written as a number.", "states the answer"),
    ],
)
def test_unusable_summaries_are_rejected_with_a_reason(text, outcome):
    solutions = ["First multiply six by seven to get forty two, which is the product. Done."]
    assert parse_template(text, solutions, "42") == (None, outcome)


def test_a_good_summary_is_kept_without_its_label():
    text = "**Thought template:** A product question: multiply the two factors and report the product as a number."
    kept, outcome = parse_template(text, ["6 x 7 = 42"], "42")
    assert outcome == "ok" and kept.startswith("A product question")
    # Generic answers (a letter, True/False) are not looked for: they say nothing about one question.
    assert parse_template("Pick the option that matches, answer with the letter B or True.", [], "True")[1] == "ok"


# -- the store -----------------------------------------------------------------------------------


def template(query_id: str, task: str, query: str, text: str = "A reusable reasoning guide.") -> ThoughtTemplate:
    return ThoughtTemplate(query_id=query_id, task=task, query=query, template=text, sources=["a"])


def test_store_files_are_checked_on_load(tmp_path):
    templates = [template("q1", "t", "alpha"), template("q2", "t", "beta")]
    TemplateStore(templates, bag_of_words(["alpha", "beta"]), "bow").save(tmp_path)
    with (tmp_path / TEMPLATES_FILE).open("a") as handle:
        handle.write('{"query_id": "q3", "ta')  # what a killed build leaves
    assert [t.query_id for t in TemplateStore.load(tmp_path).templates] == ["q1", "q2"]

    (tmp_path / TEMPLATES_FILE).write_text("".join(t.model_dump_json() + "\n" for t in templates[:1]))
    with pytest.raises(TemplateStoreError, match="do not match"):
        TemplateStore.load(tmp_path)
    (tmp_path / TEMPLATES_FILE).write_text('{"query_id": "q1"}\n')
    with pytest.raises(TemplateStoreError, match=r"templates.jsonl:1: not a thought template"):
        TemplateStore.load(tmp_path)
    with pytest.raises(TemplateStoreError, match="missing"):
        TemplateStore.load(tmp_path / "elsewhere")
    with pytest.raises(TemplateStoreError, match="2 templates but embeddings"):
        TemplateStore(templates, np.zeros((3, 4)), "bow")


def test_an_empty_store_round_trips_and_retrieves_nothing(tmp_path):
    TemplateStore([], np.zeros((0, 0)), "bow").save(tmp_path)
    store = TemplateStore.load(tmp_path)
    assert store.templates == [] and retrieve(store, "anything", embed=bag_of_words) == []


# -- retrieval and injection (real MiniLM) -----------------------------------------------------------

TOPICS = [
    ("bio", "biology", "How do green plants use sunlight, water and carbon dioxide to make sugar?"),
    ("bio2", "biology", "What does the mitochondrion do inside an animal cell?"),
    ("frac", "math", "Add the fractions 3/4 and 5/6 and simplify the result."),
    ("geo", "math", "Find the area of a triangle with base 10 cm and height 4 cm."),
    ("py", "code", "Write a Python function that reverses a list without using reversed()."),
    ("war", "history", "Why did the First World War start in 1914?"),
]


@pytest.fixture(scope="module")
def topic_store(tmp_path_factory):
    from llm_alloy.logs.embeddings import embed_texts

    templates = [template(q, task, text, f"Guide for {q}.") for q, task, text in TOPICS]
    directory = tmp_path_factory.mktemp("store")
    TemplateStore(templates, embed_texts([t.query for t in templates]), "minilm-l6").save(directory)
    return TemplateStore.load(directory)


def test_the_nearest_template_is_the_one_on_the_same_topic(topic_store):
    cases = {
        "Explain photosynthesis in the leaves of a plant.": "bio",
        "What is 2/3 plus 1/6, in lowest terms?": "frac",
        "Implement a function in Python that returns a list in reverse order.": "py",
        "What caused the outbreak of the Great War?": "war",
    }
    for query, expected in cases.items():
        found = retrieve(topic_store, query, k=1)
        assert [r.template.query_id for r in found] == [expected], query
        assert 0 < found[0].similarity <= 1


def test_same_task_templates_come_first_then_the_most_similar_of_any_task(topic_store):
    query = "Explain photosynthesis in the leaves of a plant."
    found = [r.template.query_id for r in retrieve(topic_store, query, task="math", k=3)]
    assert set(found[:2]) == {"frac", "geo"} and found[2] == "bio"
    agnostic = [r.template.query_id for r in retrieve(topic_store, query, task=None, k=2)]
    assert agnostic == ["bio", "bio2"]
    unknown_task = [r.template.query_id for r in retrieve(topic_store, query, task="astronomy", k=2)]
    assert unknown_task == agnostic
    similarities = [r.similarity for r in retrieve(topic_store, query, k=6)]
    assert similarities == sorted(similarities, reverse=True)


def test_injection_puts_the_templates_before_the_query_in_the_questions_own_format(topic_store):
    query = "What is 2/3 plus 1/6, in lowest terms? Put the answer inside \\boxed{}."
    retrieved = retrieve(topic_store, query, task="math", k=2)
    prompt = inject(query, retrieved)
    positions = [prompt.index(f"Thought Template {i}: {r.template.template}") for i, r in enumerate(retrieved, 1)]
    assert positions == sorted(positions) and positions[-1] < prompt.index(query)
    assert prompt.index("Question 1: " + retrieved[0].template.query) < positions[0]
    assert "format the question asks for" in prompt and "<answer>" not in prompt
    assert inject(query, []) == query


def test_apply_writes_prompts_that_alloy_generate_reads(topic_store):
    items = [{"query": "Reverse a Python list in place.", "task": "code"}, {"query": "Why did WWI begin?"}]
    applied = apply_templates(topic_store, items, k=1)
    assert [a["templates"][0]["query_id"] for a in applied] == ["py", "war"]
    for item, result in zip(items, applied):
        assert result["prompt"].startswith("Below are questions similar") and item["query"] in result["prompt"]


# -- a real summariser -------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm_writes_templates_that_are_not_copies_and_hide_the_answer(smollm_backend, tmp_path):
    train = ids_in("train", 3, prefix="s")
    questions = [
        ("Natalia sold clips to 48 of her friends in April, and then half as many in May. How many clips did she sell in April and May?",
         "72", ["In April she sold 48. In May she sold 48 / 2 = 24. Altogether 48 + 24 = 72.", "April 48, May 24, total 72."]),
        ("A shirt costs 20 dollars and is discounted by 15 percent. What is the new price in dollars?",
         "17", ["15% of 20 is 3, and 20 - 3 = 17.", "0.85 x 20 = 17 dollars."]),
        ("Tom reads 12 pages a day. How many days does he need for a 96-page book?",
         "8", ["96 / 12 = 8 days.", "He needs 96 divided by 12, which is 8."]),
    ]
    records = []
    for query_id, (query, truth, answers) in zip(train, questions):
        for arm, answer in zip(("a", "b"), answers):
            records.append(LogRecord(
                query_id=query_id, arm=arm, model=arm, task="gsm8k", task_description="Grade-school math word problems.",
                query=query, prompt=query, ground_truth=truth, metric="numeric", response=answer, performance=1.0, cost=0.1,
            ))
    store, report = build_templates(
        records, smollm_backend, tmp_path, k=2, embed=bag_of_words, encoder="bow",
        params=GenerationParams(max_new_tokens=80, temperature=0.2), progress=False,
    )
    assert report.built >= 1, report.to_dict()
    for built in store.templates:
        truth = next(t for q, t, _ in questions if q == built.query)
        answers = next(a for q, _, a in questions if q == built.query)
        assert len(built.template) >= 20 and built.template not in answers
        assert not re.search(rf"\b{truth}\b", built.template)
