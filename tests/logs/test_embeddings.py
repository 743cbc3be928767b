from __future__ import annotations

import json

import numpy as np
import pytest

from llm_alloy.logs.embeddings import EmbeddingError, EmbeddingTable, embed_texts

TEXTS = [
    "How do I reset my password?",
    "What is the way to change my login password?",
    "The Eiffel Tower is located in Paris.",
    "Solve for x: 2x + 3 = 11.",
]


@pytest.fixture(scope="module")
def vectors():
    return embed_texts(TEXTS)


def test_minilm_embeddings_are_unit_float32(vectors):
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_texts(vectors):
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.5
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[0, 1] > similarity[0, 3] + 0.3


def test_batching_does_not_change_the_vectors(vectors):
    np.testing.assert_allclose(embed_texts(TEXTS, batch_size=1), vectors, atol=1e-5)


def test_empty_input_gives_an_empty_matrix():
    assert embed_texts([]).shape == (0, 384)


def test_table_build_save_load_lookup(tmp_path):
    table = EmbeddingTable.build(["a", "b", "c", "d"], TEXTS)
    assert (table.encoder, table.pooling, table.dim, len(table)) == ("minilm-l6", "mean", 384, 4)
    table.save(tmp_path / "emb")
    meta = json.loads((tmp_path / "emb" / "embeddings.json").read_text())
    assert meta["ids"] == ["a", "b", "c", "d"] and meta["encoder"] == "minilm-l6"
    loaded = EmbeddingTable.load(tmp_path / "emb")
    np.testing.assert_array_equal(loaded.vectors, table.vectors)
    np.testing.assert_array_equal(loaded.lookup(["c", "a"]), table.vectors[[2, 0]])
    assert "b" in loaded and "z" not in loaded


def test_unknown_ids_are_named():
    table = EmbeddingTable(["q1", "q2"], np.eye(2, 3), encoder="toy", pooling="mean")
    with pytest.raises(EmbeddingError, match="'q9'.*'q8'"):
        table.lookup(["q1", "q9", "q8"])


def test_bad_tables_are_rejected(tmp_path):
    with pytest.raises(EmbeddingError, match="duplicate id 'x'"):
        EmbeddingTable(["x", "y", "x"], np.zeros((3, 2)), "toy", "mean")
    with pytest.raises(EmbeddingError, match="2 ids but vectors of shape"):
        EmbeddingTable(["x", "y"], np.zeros((3, 2)), "toy", "mean")
    with pytest.raises(EmbeddingError, match="missing embeddings.json"):
        EmbeddingTable.load(tmp_path)
    with pytest.raises(EmbeddingError, match="2 ids but 1 texts"):
        EmbeddingTable.build(["x", "y"], ["only one"])
