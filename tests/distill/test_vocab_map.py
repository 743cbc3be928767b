"""Vocabulary mapping: normalization, exact and edit-distance matches on real tokenizers, the cache."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from llm_alloy.distill import vocab_map
from llm_alloy.distill.vocab_map import (
    LENGTH_WINDOW,
    VocabMapError,
    build_vocab_map,
    is_byte_level,
    load_tokenizer,
    normalize_token,
    token_strings,
    vocab_map_for,
    vocabulary_key,
)
from llm_alloy.models.registry import ModelNotAvailable


def test_normalize_token_unifies_the_conventions():
    assert normalize_token("Ġthe", byte_level=True) == normalize_token("▁the", byte_level=False) == " the"
    assert normalize_token("Ċ", byte_level=True) == normalize_token("<0x0A>", byte_level=False) == "\n"
    assert normalize_token("ĉ", byte_level=True) == normalize_token("<0x09>", byte_level=False) == "\t"
    assert normalize_token("Ã©", byte_level=True) == normalize_token("é", byte_level=False) == "é"
    assert normalize_token("ĠÃ©", byte_level=True) == " é"
    # A lone lead byte of a 4-byte character: a surrogate escape on both sides, so they match.
    assert normalize_token("ð", byte_level=True) == normalize_token("<0xF0>", byte_level=False) == "\udcf0"
    assert normalize_token("ðŁ", byte_level=True) == "\udcf0\udc9f"
    # The same string means different text under the two conventions.
    assert normalize_token("é", byte_level=True) == "\udce9"
    # Without the convention: a guess from shifted bytes (Ġ, Ċ) and '▁'.
    assert normalize_token("Ġthe") == normalize_token("▁the") == " the"
    assert normalize_token("plain") == "plain"


@pytest.fixture(scope="module")
def llama():
    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="module")
def smollm():
    return load_tokenizer("smollm2-135m-instruct")


BUILD_SECONDS = {}


@pytest.fixture(scope="module")
def smollm_to_llama(smollm, llama):
    started = time.perf_counter()
    built = build_vocab_map(smollm, llama)
    BUILD_SECONDS["smollm->llama"] = time.perf_counter() - started
    return built


@pytest.fixture(scope="module")
def llama_to_smollm(llama, smollm):
    return build_vocab_map(llama, smollm)


def test_conventions_are_detected(llama, smollm):
    assert is_byte_level(smollm) and not is_byte_level(llama)
    ids = smollm("a\nb")["input_ids"]
    assert token_strings(smollm, ids) == ["a", "\n", "b"]
    ids = llama("a\nb")["input_ids"]
    assert token_strings(llama, ids) == ["", " a", "\n", "b"]  # '<s>' spells nothing


def test_exact_matches_cross_the_marker_conventions(smollm, llama, smollm_to_llama, llama_to_smollm):
    pairs = [("Ġthe", "▁the"), ("Ġworld", "▁world"), ("the", "the"), ("Ċ", "<0x0A>"), ("ĉ", "<0x09>"), ("ð", "<0xF0>"),
             ("Ġ", "▁"), ("ĠÃ©", "▁é")]
    for byte_level_token, piece in pairs:
        source_id, target_id = smollm.convert_tokens_to_ids(byte_level_token), llama.convert_tokens_to_ids(piece)
        assert smollm_to_llama.source_to_target[source_id] == target_id, byte_level_token
        assert smollm_to_llama.exact[source_id], byte_level_token
        assert llama_to_smollm.source_to_target[target_id] == source_id, piece
        assert llama_to_smollm.exact[target_id], piece


def test_special_tokens_map_by_role_and_never_to_text(smollm, llama, smollm_to_llama, llama_to_smollm):
    assert smollm_to_llama.source_to_target[smollm.eos_token_id] == llama.eos_token_id
    assert smollm_to_llama.source_to_target[smollm.bos_token_id] == llama.bos_token_id
    # '<repo_name>' has no role and no twin in Llama: unmapped rather than edit-distanced onto text.
    assert smollm_to_llama.source_to_target[smollm.convert_tokens_to_ids("<repo_name>")] == -1
    assert llama_to_smollm.source_to_target[llama.eos_token_id] == smollm.eos_token_id


def test_the_unmatched_remainder_gets_its_closest_candidate(smollm, llama, smollm_to_llama):
    mapping = smollm_to_llama
    byte_level = {token_id: normalize_token(token, True) for token, token_id in smollm.get_vocab().items()}
    targets = {token_id: normalize_token(token, False) for token, token_id in llama.get_vocab().items()
               if token_id not in llama.added_tokens_decoder}
    special = set(smollm.added_tokens_decoder)
    unmatched = [i for i in range(len(mapping.source_to_target)) if not mapping.exact[i] and i not in special]
    assert 0.3 < len(unmatched) / len(mapping.source_to_target) < 0.8  # two different vocabularies
    assert (mapping.source_to_target[unmatched] >= 0).all()

    def raw(key: str) -> str:
        return key.encode("utf-8", "surrogateescape").decode("latin-1")

    target_raw = {token_id: raw(key) for token_id, key in targets.items()}
    for source_id in np.random.default_rng(0).choice(unmatched, 60, replace=False):
        query = raw(byte_level[source_id])
        mapped = target_raw[mapping.source_to_target[source_id]]
        assert mapped != query and mapped[0] == query[0]
        # The first candidate tier (same two leading bytes, near length): the pick is no farther than any.
        tier = [text for text in target_raw.values()
                if text[:2] == query[:2] and abs(len(text) - len(query)) <= LENGTH_WINDOW]
        if tier:
            best = min(Levenshtein.distance(query, text) for text in tier)
            assert Levenshtein.distance(query, mapped) == best, (byte_level[source_id], mapped)


def test_build_time_and_coverage_smollm_to_llama(smollm, llama, smollm_to_llama):
    built = smollm_to_llama
    assert BUILD_SECONDS["smollm->llama"] < 30  # about 3 s on 2 shared cores
    assert built.coverage > 0.99
    assert built.map_ids(np.array([[-1, 10**6], [smollm.convert_tokens_to_ids("Ġthe"), 0]])).tolist() == [
        [-1, -1], [llama.convert_tokens_to_ids("▁the"), built.source_to_target[0]]]


def test_the_map_is_built_once_and_then_read_from_the_cache(smollm, llama, tmp_path, monkeypatch):
    first = vocab_map_for(smollm, llama, tmp_path)
    files = sorted(tmp_path.iterdir())
    assert [path.suffix for path in files] == [".json", ".safetensors"]
    meta = json.loads(files[0].read_text())
    assert meta["source_key"] == vocabulary_key(smollm) and meta["target_key"] == vocabulary_key(llama)
    stamps = {path: path.stat().st_mtime_ns for path in files}

    def must_not_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached vocabulary map")

    monkeypatch.setattr(vocab_map, "build_vocab_map", must_not_build)
    second = vocab_map_for(smollm, llama, tmp_path)
    assert np.array_equal(second.source_to_target, first.source_to_target)
    assert np.array_equal(second.exact, first.exact)
    assert (second.source_key, second.target_key) == (first.source_key, first.target_key)
    assert {path: path.stat().st_mtime_ns for path in files} == stamps
    # The other direction is another pair: it is built, not read.
    with pytest.raises(AssertionError, match="rebuilt"):
        vocab_map_for(llama, smollm, tmp_path)


def test_a_map_without_its_json_is_rebuilt_and_a_corrupt_one_is_reported(llama, tmp_path, monkeypatch):
    smollm = llama  # any pair will do; identical vocabularies build fastest
    vocab_map_for(smollm, llama, tmp_path)
    meta = next(tmp_path.glob("*.json"))
    tensors = next(tmp_path.glob("*.safetensors"))
    meta.unlink()  # a crash between the two writes
    calls = []
    real_build = vocab_map.build_vocab_map
    monkeypatch.setattr(vocab_map, "build_vocab_map", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    vocab_map_for(smollm, llama, tmp_path)
    assert calls == [1] and meta.exists()
    tensors.write_bytes(b"not safetensors")
    with pytest.raises(VocabMapError, match="unreadable cached vocabulary map"):
        vocab_map_for(smollm, llama, tmp_path)


@pytest.mark.slow
def test_gemma_262k_vocabulary_maps_in_bounded_time(llama):
    try:
        gemma = load_tokenizer("gemma3-270m")
    except ModelNotAvailable:
        pytest.skip("gemma3-270m is not installed")
    for source, target in ((gemma, llama), (llama, gemma)):
        started = time.perf_counter()
        built = build_vocab_map(source, target)
        assert time.perf_counter() - started < 300
        assert built.coverage > 0.9
    assert built.source_to_target[llama.convert_tokens_to_ids("▁the")] == gemma.convert_tokens_to_ids("▁the")
