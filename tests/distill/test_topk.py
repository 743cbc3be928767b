"""Source top-k distributions: local extraction against full logits, resumable shards, and the
OpenAI-compatible path against `alloy serve` on loopback (real models, real files, real HTTP)."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from llm_alloy.distill.corpus import Chunk, chunk_corpus
from llm_alloy.distill.shards import ShardError, SourceShards
from llm_alloy.distill.topk import TokenLookup, echo_sequence, extract_local, extract_openai, local_topk
from llm_alloy.models.types import ModelError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.\nIt is large.",
    "Two  spaces, an émoji 🤖 and 3.14.",
]
K = 5


def full_reference(backend, text: str):
    """The direct computation: log_softmax over the whole vocabulary, then top-k, at every position."""
    import torch

    encoded = backend.tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
    offsets = encoded.pop("offset_mapping")[0].numpy()
    with torch.inference_mode():
        out = backend.model(**encoded, labels=encoded["input_ids"])
    logprobs = out.logits[0].float().log_softmax(-1)
    keep = offsets[:, 1] > offsets[:, 0]
    top = logprobs.topk(K, dim=-1)
    return {
        "token_ids": encoded["input_ids"][0].numpy()[keep],
        "offsets": offsets[keep],
        "topk_ids": top.indices.numpy()[keep],
        "topk_logprobs": top.values.numpy()[keep],
        "argmax": logprobs.argmax(-1).numpy()[keep],
        "loss": float(out.loss),
    }


@pytest.mark.parametrize("fixture", ["tiny_backend", "smollm_backend"])
def test_local_topk_matches_full_logits(request, fixture):
    backend = request.getfixturevalue(fixture)
    texts = TEXTS if fixture == "tiny_backend" else TEXTS[2:]  # the 135M model is slow on a shared CPU
    sequences = local_topk(backend.model, backend.tokenizer, texts, K, micro_batch=2)
    for text, sequence in zip(texts, sequences):
        reference = full_reference(backend, text)
        np.testing.assert_array_equal(sequence.token_ids, reference["token_ids"])
        np.testing.assert_array_equal(sequence.offsets, reference["offsets"])
        assert sequence.topk_ids.dtype == np.int32 and sequence.topk_logprobs.dtype == np.float16
        assert sequence.topk_ids.shape == (len(reference["token_ids"]), K)
        np.testing.assert_allclose(sequence.topk_logprobs, reference["topk_logprobs"], rtol=1e-3, atol=2e-3)
        # Same ids wherever the reference has no near-tie that fp16 rounding could reorder.
        np.testing.assert_array_equal(sequence.topk_ids[:, 0], reference["argmax"])
        assert (sequence.topk_ids == reference["topk_ids"]).mean() > 0.95
        assert np.all(np.diff(sequence.topk_logprobs.astype(np.float32), axis=1) <= 0)
        assert sequence.ce == pytest.approx(reference["loss"], rel=1e-5)
        # Offsets are spans of this very text, specials (BOS) dropped.
        assert "".join(text[s:e] for s, e in sequence.offsets).strip() != ""


def test_padding_micro_batch_and_position_slices_do_not_change_results(tiny_backend, monkeypatch):
    one = local_topk(tiny_backend.model, tiny_backend.tokenizer, TEXTS, K, micro_batch=1)
    # Log-softmax a few positions at a time, as a 262k vocabulary would be.
    monkeypatch.setattr("llm_alloy.distill.topk._SLICE_ELEMENTS", 3 * len(tiny_backend.tokenizer))
    three = local_topk(tiny_backend.model, tiny_backend.tokenizer, TEXTS, K, micro_batch=3)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
        np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=2e-3)
        assert a.ce == pytest.approx(b.ce, rel=1e-5)


def test_micro_batch_size_is_honoured(tiny_backend):
    batch_sizes = []

    def record(_module, _args, kwargs):
        batch_sizes.append(kwargs["input_ids"].shape[0])

    handle = tiny_backend.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        local_topk(tiny_backend.model, tiny_backend.tokenizer, TEXTS * 3, K, micro_batch=4)
    finally:
        handle.remove()
    assert batch_sizes == [4, 4, 1]


def chunks_of(texts, tokenizer, max_tokens=12):
    return list(chunk_corpus(texts, tokenizer, max_tokens))


def shard_arrays(folder):
    from safetensors.numpy import load_file

    return {p.name: load_file(str(p)) for p in sorted(folder.glob("shard-*.safetensors"))}


def test_shards_hold_k_columns_and_read_back(tiny_backend, tmp_path):
    chunks = chunks_of(TEXTS, tiny_backend.tokenizer)
    shards = extract_local(chunks, tmp_path, tiny_backend, k=K, shard_size=3, micro_batch=2, progress=False)
    folder = tmp_path / "sources" / "tiny-llama"
    assert shards.complete and shards.k == K and len(shards) == len(chunks)
    arrays = shard_arrays(folder)
    assert len(arrays) == -(-len(chunks) // 3)
    for shard in arrays.values():
        n = len(shard["token_ids"])
        assert shard["topk_ids"].shape == (n, K) and shard["topk_logprobs"].shape == (n, K)
        assert shard["topk_logprobs"].dtype == np.float16 and shard["topk_ids"].dtype == np.int32
        assert shard["seq_starts"][-1] == n and len(shard["ce"]) == len(shard["chunk_ids"])
    direct = local_topk(tiny_backend.model, tiny_backend.tokenizer, [c.text for c in chunks], K)
    for chunk, expected in zip(chunks, direct):
        got = shards.sequence(chunk.id)
        np.testing.assert_array_equal(got.topk_ids, expected.topk_ids)
        np.testing.assert_array_equal(got.offsets, expected.offsets)
        assert got.ce == pytest.approx(expected.ce, rel=1e-6)
    # The top-k part is k * 6 bytes; ids and offsets add 12, the header a little.
    assert 12 + 6 * K < shards.bytes_per_token() < 12 + 6 * K + 200
    with pytest.raises(KeyError):
        shards.sequence(len(chunks) + 5)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_chunks"] == len(chunks) and len(manifest["corpus_sha256"]) == 64


class Killed(RuntimeError):
    pass


def test_a_killed_run_resumes_without_redoing_finished_shards(tiny_backend, tmp_path):
    chunks = chunks_of(TEXTS * 2, tiny_backend.tokenizer)
    assert len(chunks) > 6
    reference = extract_local(chunks, tmp_path / "whole", tiny_backend, k=K, shard_size=3, progress=False)

    def kill(record):
        raise Killed(record["file"])

    run = tmp_path / "run"
    with pytest.raises(Killed):
        extract_local(iter(chunks), run, tiny_backend, k=K, shard_size=3, progress=False, on_shard=kill)
    folder = run / "sources" / "tiny-llama"
    first = folder / "shard-00000.safetensors"
    stamp, digest = first.stat().st_mtime_ns, hashlib.sha256(first.read_bytes()).hexdigest()
    interrupted = SourceShards(folder)
    assert not interrupted.complete and len(interrupted) == 3

    written = []
    resumed = extract_local(iter(chunks), run, tiny_backend, k=K, shard_size=3, progress=False, on_shard=lambda r: written.append(r["file"]))
    assert "shard-00000.safetensors" not in written and len(written) == len(shard_arrays(folder)) - 1
    assert first.stat().st_mtime_ns == stamp and hashlib.sha256(first.read_bytes()).hexdigest() == digest
    assert resumed.complete and resumed.manifest["corpus_sha256"] == reference.manifest["corpus_sha256"]
    whole = shard_arrays(tmp_path / "whole" / "sources" / "tiny-llama")
    again = shard_arrays(folder)
    assert whole.keys() == again.keys()
    for name in whole:
        for key in whole[name]:
            np.testing.assert_array_equal(whole[name][key], again[name][key])

    # A finished folder is reused as is, and refuses other settings or another corpus.
    assert extract_local(chunks, run, tiny_backend, k=K, shard_size=3, progress=False, on_shard=kill).complete
    with pytest.raises(ShardError, match="made with k=5, now k=4"):
        extract_local(chunks, run, tiny_backend, k=4, shard_size=3, progress=False)
    changed = [Chunk(0, chunks[0].text + "!")] + chunks[1:]
    with pytest.raises(ShardError, match="shard 0 was made from other text"):
        extract_local(changed, run, tiny_backend, k=K, shard_size=3, progress=False)
    more = chunks + [Chunk(len(chunks), "more text")]
    with pytest.raises(ShardError, match="shard 2 was made from other text"):  # the last shard grew
        extract_local(more, run, tiny_backend, k=K, shard_size=3, progress=False)
    extract_local(chunks[:6], tmp_path / "six", tiny_backend, k=K, shard_size=3, progress=False)
    with pytest.raises(ShardError, match="more than the 6 chunks"):
        extract_local(more, tmp_path / "six", tiny_backend, k=K, shard_size=3, progress=False)
    with pytest.raises(ShardError, match="the corpus shrank"):
        extract_local(chunks[:3], tmp_path / "six", tiny_backend, k=K, shard_size=3, progress=False)


@pytest.fixture(scope="module")
def served_tiny(tiny_backend):
    from llm_alloy.models.server import create_app, serve_in_thread

    with serve_in_thread(create_app(tiny_backend, served_name="tiny")) as url:
        yield url


def decoded(tokenizer, ids):
    return [tokenizer.decode([int(i)]) if i >= 0 else None for i in ids]


def test_openai_extraction_matches_local(tiny_backend, served_tiny, tmp_path):
    tokenizer = tiny_backend.tokenizer
    chunks = chunks_of(TEXTS, tokenizer, max_tokens=40)
    shards = extract_openai(chunks, tmp_path, "served", served_tiny, "tiny", "tiny-llama", k=K, shard_size=2, progress=False)
    local = local_topk(tiny_backend.model, tokenizer, [c.text for c in chunks], K)
    counts: dict[str, int] = {}
    for text in tokenizer.batch_decode([[i] for i in range(len(tokenizer))]):
        counts[text] = counts.get(text, 0) + 1
    compared = 0
    for chunk, expected in zip(chunks, local):
        got = shards.sequence(chunk.id)
        np.testing.assert_array_equal(got.token_ids, expected.token_ids)
        np.testing.assert_array_equal(got.offsets, expected.offsets)
        assert got.ce == pytest.approx(expected.ce, rel=1e-4)
        for row in range(len(got.token_ids)):
            local_pairs = list(zip(decoded(tokenizer, expected.topk_ids[row]), expected.topk_logprobs[row]))
            for token_id, logprob in zip(got.topk_ids[row], got.topk_logprobs[row]):
                if token_id < 0:
                    continue
                text = decoded(tokenizer, [token_id])[0]
                # The server keys alternatives by decoded string, so ids sharing one are told apart
                # only by their string; every entry must still be one of the local top-k.
                assert any(t == text and abs(lp - logprob) < 2e-3 for t, lp in local_pairs), (row, text)
            for token_id, logprob in zip(expected.topk_ids[row], expected.topk_logprobs[row]):
                if counts[tokenizer.decode([int(token_id)])] == 1:
                    position = np.flatnonzero(got.topk_ids[row] == token_id)
                    assert len(position) == 1 and abs(got.topk_logprobs[row][position[0]] - logprob) < 2e-3
                    compared += 1
    assert compared > 0.5 * sum(len(s.token_ids) for s in local) * K


def test_openai_extraction_with_token_ids_is_exact(tiny_backend, served_tiny, tmp_path):
    """With ids in the response (vLLM's return_tokens_as_token_ids, which alloy serve honours too),
    colliding decoded strings no longer lose entries: the served top-k equals the local one."""
    tokenizer = tiny_backend.tokenizer
    chunks = chunks_of(TEXTS, tokenizer, max_tokens=40)
    shards = extract_openai(
        chunks, tmp_path, "served", served_tiny, "tiny", "tiny-llama", k=K, shard_size=2,
        token_ids_in_response=True, progress=False,
    )
    local = local_topk(tiny_backend.model, tokenizer, [c.text for c in chunks], K)
    for chunk, expected in zip(chunks, local):
        got = shards.sequence(chunk.id)
        rows = len(got.token_ids) - 1  # the last row comes from the generated token, which may be EOS
        np.testing.assert_array_equal(got.topk_ids[:rows], expected.topk_ids[:rows])
        np.testing.assert_allclose(got.topk_logprobs[:rows], expected.topk_logprobs[:rows], atol=2e-3)


def test_echo_layout_with_bos_first_reads_the_same(tiny_backend, served_tiny):
    """vLLM echoes every prompt token, BOS first with no logprob, and counts offsets over token strings."""
    import openai

    tokenizer = tiny_backend.tokenizer
    text = TEXTS[1]
    client = openai.OpenAI(base_url=served_tiny, api_key="none")
    response = client.completions.create(model="tiny", prompt=text, max_tokens=1, echo=True, logprobs=K, temperature=0)
    ours = response.choices[0].logprobs
    lookup = TokenLookup(tokenizer)
    plain = echo_sequence(text, ours, tokenizer, lookup, K)
    with_bos = SimpleNamespace(
        tokens=["<s>", *ours.tokens],
        token_logprobs=[None, *ours.token_logprobs],
        top_logprobs=[None, *ours.top_logprobs],
        text_offset=[0, *[offset + 3 for offset in ours.text_offset]],
    )
    other = echo_sequence(text, with_bos, tokenizer, lookup, K)
    for field in ("token_ids", "offsets", "topk_ids", "topk_logprobs"):
        np.testing.assert_array_equal(getattr(plain, field), getattr(other, field))
    assert plain.ce == other.ce
    # The row after the last text token comes from the generated token's alternatives.
    assert (plain.topk_ids[-1] >= 0).any()
    with pytest.raises(ModelError, match="tokenizer"):
        echo_sequence(text + " extra words", ours, tokenizer, lookup, K)


def test_token_lookup_reads_strings_raw_tokens_and_ids(tiny_backend):
    tokenizer = tiny_backend.tokenizer
    lookup = TokenLookup(tokenizer)
    the = tokenizer.convert_tokens_to_ids("▁the")
    assert lookup("▁the") == the and lookup("token_id:1234") == 1234 and lookup("no such token ⁂⁂") == -1
    # '▁the' and 'the' both decode to 'the': the lower id (the earlier merge) wins.
    assert lookup("the") == min(the, tokenizer.convert_tokens_to_ids("the"))


def test_a_wrong_tokenizer_is_refused(served_tiny, tmp_path):
    chunks = [Chunk(0, TEXTS[0])]
    with pytest.raises(ModelError, match="tokenizer"):
        extract_openai(chunks, tmp_path, "served", served_tiny, "tiny", "smollm2-135m-instruct", k=K, progress=False)
