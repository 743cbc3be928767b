"""Corpus reading and chunking by the target tokenizer (real files, real tokenizers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_alloy.distill.corpus import CorpusError, chunk_corpus, clean_boundaries, read_corpus

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.\nIt has  two spaces and an émoji 🤖 here.",
    "x" * 5,
]


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    from llm_alloy.models.registry import resolve_model_path

    return {name: AutoTokenizer.from_pretrained(resolve_model_path(name)) for name in ("tiny-llama", "smollm2-135m-instruct")}


def test_every_format_reads_the_same_documents(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS)) + "\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": DOCS, "n": [1, 2, 3]}), parquet)
    txt = tmp_path / "c.txt"
    txt.write_text("\n\n".join(DOCS) + "\n")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS})}).save_to_disk(str(saved))
    for path in (jsonl, parquet, txt, saved):
        assert list(read_corpus(path)) == DOCS, path
    assert list(read_corpus(jsonl, limit=2)) == DOCS[:2]


def test_bad_corpora_give_one_line_errors(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        read_corpus(tmp_path / "missing.jsonl")  # at once, before any reading
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: no 'text' field \(found: body\)"):
        list(read_corpus(bad))
    with pytest.raises(CorpusError, match="bad.jsonl:1: no 'body' field"):
        list(read_corpus(bad, text_field="body"))
    typed = tmp_path / "typed.jsonl"
    typed.write_text('{"text": 3}\n')
    with pytest.raises(CorpusError, match="'text' is int"):
        list(read_corpus(typed))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(CorpusError, match=r"no 'text' column \(found: body\)"):
        list(read_corpus(tmp_path / "p.parquet"))
    (tmp_path / "c.csv").write_text("text\na\n")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        read_corpus(tmp_path / "c.csv")
    assert issubclass(CorpusError, ValueError)


def test_clean_boundaries_skip_tokens_inside_one_character():
    # Four byte tokens of one emoji share its span; a byte-level token overlaps the next one.
    offsets = np.array([[0, 5], [5, 6], [6, 7], [6, 7], [6, 7], [7, 9], [8, 9], [9, 12]])
    assert clean_boundaries(offsets).tolist() == [0, 1, 2, 5, 7]


def check_chunks(tokenizer, docs, chunks, max_tokens):
    """Chunks of one document are consecutive and join back into it; each fits in max_tokens unless
    it is a single target token of its document (or the tokens of one character), which re-tokenized
    on its own can take more (SentencePiece adds a word-start marker) and cannot be cut further."""
    position = 0
    for doc in docs:
        starts = np.array([s for s, _ in tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]])
        text = ""
        while text != doc:
            chunk = chunks[position]
            assert chunk.text and doc.startswith(text + chunk.text)
            count = len(tokenizer(chunk.text, add_special_tokens=False)["input_ids"])
            inside = starts[(starts >= len(text)) & (starts < len(text) + len(chunk.text))]
            assert count <= max_tokens or len(set(inside.tolist())) <= 1, (chunk, count)
            text += chunk.text
            position += 1
    assert position == len(chunks)
    assert [c.id for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize("name", ["tiny-llama", "smollm2-135m-instruct"])
@pytest.mark.parametrize("max_tokens", [1, 3, 8])
def test_chunks_fit_and_concatenate_back(tokenizers, name, max_tokens):
    chunks = list(chunk_corpus(DOCS, tokenizers[name], max_tokens))
    assert len(chunks) > len(DOCS)
    check_chunks(tokenizers[name], DOCS, chunks, max_tokens)


def test_long_chunks_use_the_whole_budget(tokenizers):
    tokenizer = tokenizers["smollm2-135m-instruct"]
    doc = " ".join(["alpha beta gamma delta"] * 40)
    chunks = list(chunk_corpus([doc], tokenizer, 16))
    counts = [len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(counts) == 16 and sum(counts[:-1]) / len(counts[:-1]) > 14


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab cd\n\t.éß🤖の,")), min_size=1, max_size=60), st.integers(1, 9))
def test_chunking_round_trips_any_text(tokenizers, text, max_tokens):
    if not text.strip():
        return
    for tokenizer in tokenizers.values():
        check_chunks(tokenizer, [text], list(chunk_corpus([text], tokenizer, max_tokens)), max_tokens)
