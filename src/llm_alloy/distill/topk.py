"""Source distributions for logit-level fusion: each source model's top-k next-token log-probabilities
on every chunk of the corpus, from a local model or an OpenAI-compatible completions endpoint,
written to resumable shards (see `shards.py` for the layout)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from llm_alloy.distill.corpus import Chunk
from llm_alloy.distill.shards import SourceSequence, SourceShards, shard_header, source_dir, write_shards
from llm_alloy.models.local import LocalBackend
from llm_alloy.models.openai_backend import OpenAIBackend, RetryPolicy, LoopThread, gather_or_cancel
from llm_alloy.models.registry import resolve_model_path
from llm_alloy.models.types import ModelError

__all__ = ["SourceSequence", "SourceShards", "TokenLookup", "echo_sequence", "extract_local", "extract_openai", "local_topk"]

OnShard = Callable[[dict[str, Any]], None]


# -- local models ----------------------------------------------------------------------------------
def extract_local(
    chunks: Iterable[Chunk],
    out_dir: str | Path,
    backend: LocalBackend,
    k: int = 10,
    shard_size: int = 256,
    micro_batch: int = 4,
    progress: bool = True,
    on_shard: OnShard | None = None,
) -> SourceShards:
    """Top-k shards of a local model under `OUT/sources/<backend.name>/`; the model is loaded only if
    some shard still has to be computed. `micro_batch` chunks share a forward pass: the full-vocabulary
    logits of one micro-batch are the largest tensor held."""
    header = shard_header(backend.name, backend.identity, backend.model_id, k, shard_size)

    def compute(shard_chunks: list[Chunk], advance: Callable[[int], Any]) -> list[SourceSequence]:
        return local_topk(backend.model, backend.tokenizer, [c.text for c in shard_chunks], k, micro_batch, advance)

    return write_shards(chunks, source_dir(out_dir, backend.name), header, compute, progress, on_shard)


def local_topk(
    model, tokenizer, texts: Sequence[str], k: int, micro_batch: int = 4, advance: Callable[[int], Any] | None = None
) -> list[SourceSequence]:
    """One forward pass per micro-batch of texts (right-padded, so real tokens see no padding),
    sorted by length to waste little on padding; returns the sequences in input order."""
    import torch

    encoded = tokenizer(list(texts), return_offsets_mapping=True, verbose=False)
    order = sorted(range(len(texts)), key=lambda i: len(encoded["input_ids"][i]))
    results: list[SourceSequence | None] = [None] * len(texts)
    device = model.device
    for start in range(0, len(order), micro_batch):
        rows = order[start : start + micro_batch]
        width = max(len(encoded["input_ids"][i]) for i in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for b, i in enumerate(rows):
            ids = encoded["input_ids"][i]
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention[b, : len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            for b, i in enumerate(rows):
                length = len(encoded["input_ids"][i])
                results[i] = sequence_from_logits(logits[b, :length], input_ids[b, :length], encoded["offset_mapping"][i], k)
        del logits
        if advance:
            advance(len(rows))
    return results  # type: ignore[return-value]


def sequence_from_logits(logits, input_ids, offsets, k: int) -> SourceSequence:
    """Top-k log-probs (log_softmax over the whole vocabulary, then top-k) and the mean NLL of the
    sequence's own next tokens, from its (n, vocab) logits, a slice of positions at a time so the
    float32 copies stay small whatever the vocabulary and length."""
    import torch

    step = max(1, _SLICE_ELEMENTS // logits.shape[-1])
    targets = input_ids[1:].to(logits.device)
    values, indices, own = [], [], []
    for start in range(0, len(logits), step):
        logprobs = logits[start : start + step].float().log_softmax(-1)
        top = logprobs.topk(k, dim=-1)
        values.append(top.values.cpu())
        indices.append(top.indices.cpu())
        following = targets[start : start + step]
        own.append(logprobs[: len(following)].gather(-1, following[:, None]).squeeze(-1).cpu())
    nll = -torch.cat(own)
    spans = np.asarray(offsets, dtype=np.int32).reshape(-1, 2)
    keep = spans[:, 1] > spans[:, 0]  # special tokens (BOS) are context, not text
    return SourceSequence(
        token_ids=input_ids.cpu().numpy().astype(np.int32)[keep],
        offsets=spans[keep],
        topk_ids=torch.cat(indices).numpy().astype(np.int32)[keep],
        topk_logprobs=torch.cat(values).numpy().astype(np.float16)[keep],
        ce=float(nll.mean()) if len(nll) else math.nan,
    )


_SLICE_ELEMENTS = 1 << 24  # 64 MiB of float32 log-probs per step


# -- OpenAI-compatible endpoints -------------------------------------------------------------------
class TokenLookup:
    """Token strings as servers return them (decoded, or raw vocabulary entries, or vLLM's
    `token_id:N`) back to ids of the local copy of the server's tokenizer.

    Several ids can decode to the same string (SentencePiece '▁the' and 'the'); the lowest id, the
    earlier and usually more frequent merge, is taken. Servers that can return ids avoid the guess.
    """

    _ID_FORM = re.compile(r"token_id:(\d+)")

    def __init__(self, tokenizer) -> None:
        size = len(tokenizer)
        self.ids: dict[str, int] = {}
        for token_id, text in enumerate(tokenizer.batch_decode([[i] for i in range(size)])):
            self.ids.setdefault(text, token_id)
        for token_id, raw in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
            self.ids.setdefault(raw, token_id)

    def __call__(self, token: str) -> int:
        found = self.ids.get(token)
        if found is not None:
            return found
        match = self._ID_FORM.fullmatch(token)
        return int(match.group(1)) if match else -1


def extract_openai(
    chunks: Iterable[Chunk],
    out_dir: str | Path,
    source: str,
    base_url: str,
    model: str,
    tokenizer: str,
    k: int = 10,
    api_key_env: str | None = None,
    shard_size: int = 256,
    max_concurrency: int = 4,
    timeout_s: float = 120.0,
    retry: RetryPolicy = RetryPolicy(),
    token_ids_in_response: bool = False,
    progress: bool = True,
    on_shard: OnShard | None = None,
) -> SourceShards:
    """Top-k shards of a model behind an OpenAI-compatible completions endpoint (echo + logprobs).

    `tokenizer` (a folder or packaged name) is the served model's tokenizer: it gives the token ids
    and character offsets and maps returned token strings to ids. `token_ids_in_response` asks the
    server for ids (vLLM's `return_tokens_as_token_ids`), which removes the string-to-id guess.
    """
    header = shard_header(source, f"openai:{base_url.rstrip('/')}:{model}", tokenizer, k, shard_size)
    client = OpenAIBackend(source, base_url, model, api_key_env, max_concurrency, timeout_s, retry)
    loaded: dict[str, Any] = {}

    def compute(shard_chunks: list[Chunk], advance: Callable[[int], Any]) -> list[SourceSequence]:
        if not loaded:
            from transformers import AutoTokenizer

            loaded["tokenizer"] = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer))
            loaded["lookup"] = TokenLookup(loaded["tokenizer"])
        return LoopThread.get().run(_echo_all(client, shard_chunks, loaded["tokenizer"], loaded["lookup"], k, token_ids_in_response, advance))

    try:
        return write_shards(chunks, source_dir(out_dir, source), header, compute, progress, on_shard)
    finally:
        client.close()


async def _echo_all(client: OpenAIBackend, chunks, tokenizer, lookup, k, token_ids_in_response, advance) -> list[SourceSequence]:
    extra = {"return_tokens_as_token_ids": True} if token_ids_in_response else None

    async def one(chunk: Chunk) -> SourceSequence:
        # max_tokens=1: the generated token's alternatives are the distribution after the whole text.
        response = await client.call(
            lambda api: api.completions.create(
                model=client.model_id, prompt=chunk.text, max_tokens=1, echo=True, logprobs=k, temperature=0.0, extra_body=extra
            )
        )
        logprobs = response.choices[0].logprobs if response.choices else None
        if logprobs is None or not logprobs.tokens:
            raise ModelError(f"{client.name}: {client.base_url} returned no echoed logprobs (completions with echo=True, logprobs={k})")
        sequence = echo_sequence(chunk.text, logprobs, tokenizer, lookup, k)
        advance(1)
        return sequence

    return await gather_or_cancel([one(chunk) for chunk in chunks])


def echo_sequence(text: str, logprobs, tokenizer, lookup: TokenLookup, k: int) -> SourceSequence:
    """A completions `logprobs` object (echoed text, then at most one generated token) as a sequence.

    Entry j of the echo is the distribution that predicted token j, so output row i (after reading
    token i) is entry i+1, and the last row is the generated token's entry. Servers echo either the
    text tokens only (`alloy serve`) or every token, BOS first with no logprob (vLLM); both are read.
    """
    encoded = tokenizer(text, return_offsets_mapping=True, verbose=False)
    ids = np.asarray(encoded["input_ids"], dtype=np.int32)
    spans = np.asarray(encoded["offset_mapping"], dtype=np.int32).reshape(-1, 2)
    kept = spans[:, 1] > spans[:, 0]
    tokens, token_logprobs, tops = logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs or []
    echoes_specials = (
        not kept.all()
        and len(tokens) in (len(ids), len(ids) + 1)
        and token_logprobs[0] is None
        and tokens[0] in (tokenizer.convert_ids_to_tokens(int(ids[0])), tokenizer.decode([int(ids[0])]))
    )
    echoed = len(ids) if echoes_specials else int(kept.sum())
    if len(tokens) not in (echoed, echoed + 1):
        raise ModelError(
            f"the server echoed {len(tokens)} tokens of a text that tokenizer {tokenizer.name_or_path} splits into"
            f" {int(kept.sum())} (+{int((~kept).sum())} special): is it the served model's tokenizer?"
        )
    if not echoes_specials and logprobs.text_offset:
        starts = np.asarray(logprobs.text_offset[:echoed])
        if not np.array_equal(starts, spans[kept, 0]):
            where = int(np.flatnonzero(starts != spans[kept, 0])[0])
            raise ModelError(f"the server's token {where} starts at char {starts[where]}, tokenizer {tokenizer.name_or_path} says {spans[kept, 0][where]}: not the served model's tokenizer?")
    rows = [_top_row(tops[j + 1] if j + 1 < len(tops) else None, lookup, k) for j in range(echoed)]
    topk_ids = np.array([ids_row for ids_row, _ in rows], dtype=np.int32).reshape(echoed, k)
    topk_logprobs = np.array([lp_row for _, lp_row in rows], dtype=np.float16).reshape(echoed, k)
    own = [-lp for lp in token_logprobs[:echoed] if lp is not None]
    select = kept if echoes_specials else np.ones(echoed, dtype=bool)
    return SourceSequence(
        token_ids=ids[kept],
        offsets=spans[kept],
        topk_ids=topk_ids[select],
        topk_logprobs=topk_logprobs[select],
        ce=float(np.mean(own)) if own else math.nan,
    )


def _top_row(top: dict[str, float] | None, lookup: TokenLookup, k: int) -> tuple[list[int], list[float]]:
    """Best first, ids the tokenizer does not know dropped, padded to k with (-1, -inf)."""
    ranked = sorted((top or {}).items(), key=lambda item: -item[1])[:k]
    pairs = [(lookup(token), logprob) for token, logprob in ranked]
    pairs = [(i, lp) for i, lp in pairs if i >= 0]
    pairs += [(-1, -math.inf)] * (k - len(pairs))
    return [i for i, _ in pairs], [lp for _, lp in pairs]
