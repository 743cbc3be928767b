"""Token alignment: which source position stands for each target position of the same text.

Position semantics: row i of a model's output is its distribution after reading token i (predicting
token i + 1). A target position j is therefore best served by the source position that has read the
same text, i.e. the source token whose span ends where target token j ends.

Two implementations with one output convention (int64 (m,) source row per target token, -1 = none):

- `align_by_offsets`: from the character offsets that fast tokenizers return; vectorised numpy,
  linear in the number of tokens. This is what the pipeline uses.
- `align_by_edit_distance`: FuseLLM's minimum-edit-distance alignment (dynamic time warping over the two
  token-string sequences, step cost = Levenshtein distance of the two token strings). The reference for
  tests and the speed benchmark; quadratic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class AlignmentError(ValueError):
    """Offsets that cannot describe a tokenization of one text (wrong shape, end < start, out of order)."""


def _spans(offsets: np.ndarray, name: str) -> np.ndarray:
    spans = np.asarray(offsets)
    if spans.ndim != 2 or spans.shape[1] != 2:
        raise AlignmentError(f"{name}: expected an (n, 2) array of [start, end) spans, got shape {spans.shape}")
    if spans.size and spans.dtype.kind not in "iu":
        raise AlignmentError(f"{name}: expected integer character offsets, got dtype {spans.dtype}")
    spans = spans.astype(np.int64, copy=False)
    backwards = spans[:, 1] < spans[:, 0]
    if backwards.any():
        row = int(backwards.nonzero()[0][0])
        raise AlignmentError(f"{name}: span {row} ends before it starts: {spans[row].tolist()}")
    return spans


@dataclass(frozen=True)
class _Runs:
    """Non-empty tokens grouped into runs that end at the same character: the pieces of one split
    multi-byte character (every piece's span ends after the whole character; a byte-level first piece
    such as 'ĠðŁ' also covers the characters before), or SentencePiece's dummy-prefix '▁', which shares
    the first character's span with the token after it. A run spans from its first token's start."""

    rows: np.ndarray  # original row of each non-empty token
    token_starts: np.ndarray  # start of each non-empty token, as given
    run: np.ndarray  # run index of each non-empty token
    rank: np.ndarray  # position of each non-empty token within its run
    heads: np.ndarray  # index (into rows) of each run's first token
    sizes: np.ndarray  # tokens per run
    starts: np.ndarray  # per run, gaps closed
    ends: np.ndarray  # per run


def _runs(spans: np.ndarray, name: str) -> _Runs:
    """Group the non-empty tokens into runs and close the gaps between runs.

    SentencePiece tokens with a leading '▁' may or may not include the space in their span, depending
    on the tokenizer version; a token that excludes it leaves a one-character gap before it. The space
    was consumed by that token, so each run's start is pulled back to the previous run's end: both
    conventions then give the same spans. The same holds for characters a normalizer dropped (smollm2's
    byte-level tokenizer drops some control characters): they count as read by the next token.
    """
    # Method calls and slicing rather than np.diff/np.flatnonzero: per call this is a few dozen small
    # array operations, and their fixed cost is most of the time on a typical chunk.
    rows = (spans[:, 1] > spans[:, 0]).nonzero()[0]
    starts, ends = spans[rows, 0], spans[rows, 1]
    if (starts[1:] < starts[:-1]).any() or (ends[1:] < ends[:-1]).any():
        raise AlignmentError(f"{name}: spans are not in text order")
    # SentencePiece's dummy-prefix '▁' gets a span nested at the start of the next token's ('▁' (0, 1)
    # then '))' (0, 2)): it read no character of its own, so it joins the run of the token it precedes.
    # Only the first token of a start is such a prefix; pieces of a split character that share a start
    # with a longer last piece ('Ģ' (0, 1) x3 then 'Â§' (0, 2)) keep their ends.
    nested = (starts[1:] == starts[:-1]) & (ends[1:] > ends[:-1])
    nested[1:] &= starts[1:-1] != starts[:-2]
    ends = ends.copy()
    ends[:-1][nested] = ends[1:][nested]
    head = np.ones(len(rows), dtype=bool)
    head[1:] = ends[1:] != ends[:-1]
    heads = head.nonzero()[0]
    run = head.cumsum() - 1
    run_starts, run_ends = starts[heads], ends[heads]
    if len(heads):
        run_starts = np.minimum(run_starts, np.concatenate([run_starts[:1], run_ends[:-1]]))
    return _Runs(
        rows=rows,
        token_starts=starts,
        run=run,
        rank=np.arange(len(rows)) - heads[run],
        heads=heads,
        sizes=np.concatenate([heads[1:], [len(rows)]]) - heads,
        starts=run_starts,
        ends=run_ends,
    )


def align_by_offsets(
    target_offsets: np.ndarray, source_offsets: np.ndarray, *, exact_boundaries: bool = False
) -> np.ndarray:
    """Source row for each target token of the same text, from [start, end) character offsets.

    Rules (each target token j with a non-empty span [a, b)):
    - j gets the source token that ends at b (has read the same text) if there is one, else the LAST
      source token that overlaps [a, b): the one that has read furthest into j. When several source
      tokens cover j (many-to-one) both say: the last of them.
    - One source token s covering several target tokens (one-to-many): every target token of the group
      gets s, the first included. s is the only source position that overlaps them, but for all except
      the last of the group it has read past the target token's end (its distribution predicts what
      follows the whole group, not the rest of the word). `exact_boundaries=True` sets those to -1.
    - Consecutive tokens that end at the same character form a run: the bytes of a split multi-byte
      character (SentencePiece byte fallback '<0xF0>' '<0x9F>' ..., byte-level BPE pieces 'ĠðŁ' '¤'
      'ĸ'; the offsets give every piece the whole character) or SentencePiece's dummy-prefix '▁', which
      fast tokenizers give the first character's span or a span nested at the start of the next token's
      (it joins that token's run). When the chosen source run ends at the same
      character, target piece r of R goes to source piece ceil((r + 1) * Q / R) - 1 of Q: identical
      tokenizations map one to one, the last piece to the last piece (the one that has read the whole
      character), and rows stay in order. Otherwise the run's tokens get the last source token that
      starts before their end (a target ' ' against 'Ġæ' 'Ĺ' '¥' gets 'Ġæ', the only one it overlaps).
    - Empty-span tokens (BOS/EOS and other special tokens) overlap no text. A target one at character p
      gets the last empty-span source token at p (both have read text[:p] and a special token), -1 when
      the source has none there (a source without BOS has no position that has read nothing).
    - -1 where no source token overlaps (e.g. the source text was truncated).

    With `exact_boundaries=True` a row is kept only where both models have read the same text: the
    source token ends where the target token ends and, inside a split character, the pieces end at the
    same fraction of it ((r + 1) * Q divisible by R; offsets carry no byte lengths, so this is exact for
    identical splits and an approximation otherwise). Vectorised: `np.searchsorted`, no per-token loop.
    """
    target = _spans(target_offsets, "target_offsets")
    source = _spans(source_offsets, "source_offsets")
    rows = np.full(len(target), -1, dtype=np.int64)
    if not len(target) or not len(source):
        return rows

    t, s = _runs(target, "target_offsets"), _runs(source, "source_offsets")
    if len(t.rows) and len(s.rows):
        # Per target run: the source run ending at the same character if there is one (runs end at
        # strictly increasing characters), else the last source run starting before its end, if that
        # reaches past its start.
        after = np.searchsorted(s.starts, t.ends, side="left")
        same_end = np.minimum(np.searchsorted(s.ends, t.ends, side="left"), len(s.ends) - 1)
        ends_together = s.ends[same_end] == t.ends
        last = np.where(ends_together, same_end, np.maximum(after - 1, 0))
        overlaps = ends_together | ((after > 0) & (s.ends[last] > t.starts))
        # Per target token.
        source_run, pieces, rank, size = last[t.run], s.sizes[last[t.run]], t.rank, t.sizes[t.run]
        paired = ends_together[t.run]
        # Not paired: the last piece of the source run that starts before the target token's end.
        overlapping_piece = np.searchsorted(s.token_starts, t.ends[t.run], side="left") - 1 - s.heads[source_run]
        piece = np.where(
            paired, ((rank + 1) * pieces + size - 1) // size - 1, np.minimum(np.maximum(overlapping_piece, 0), pieces - 1)
        )
        keep = overlaps[t.run]
        if exact_boundaries:
            keep &= paired & ((rank + 1) * pieces % size == 0)
        rows[t.rows] = np.where(keep, s.rows[s.heads[source_run] + piece], -1)

    t_special = np.flatnonzero(target[:, 1] == target[:, 0])
    s_special = np.flatnonzero(source[:, 1] == source[:, 0])
    if len(t_special) and len(s_special):
        at = source[s_special, 0]
        wanted = target[t_special, 0]
        last = np.searchsorted(at, wanted, side="right") - 1
        same_place = (last >= 0) & (at[np.maximum(last, 0)] == wanted)
        rows[t_special] = np.where(same_place, s_special[np.maximum(last, 0)], -1)
    return rows


@dataclass(frozen=True)
class EditAlignment:
    """The reference alignment of one sequence pair.

    `rows`: source row per target token (the last source token the warping path pairs with it).
    `exact`: the target positions where the reference is exact (see `edit_distance_alignment`).
    `cost`: total Levenshtein cost of the warping path.
    """

    rows: np.ndarray
    exact: np.ndarray
    cost: float


def edit_distance_alignment(target_tokens: list[str], source_tokens: list[str]) -> EditAlignment:
    """FuseLLM's minimum-edit-distance alignment, with the positions where it is exact.

    Dynamic time warping over the two token-string sequences (step cost: Levenshtein distance of the two
    strings), traced back as FuseLLM does (ties: diagonal, then source step, then target step). Pass
    normalized strings (`llm_alloy.distill.vocab_map.token_strings`: 'Ġ'/'▁' unified, special tokens ''):
    the DP sees only strings, never offsets. The DP runs over anti-diagonals with numpy, so this
    reference is as fast as a quadratic DP reasonably gets.

    A target position j is *exact* when all of these hold:
    1. the two sequences spell the same bytes (their UTF-8 concatenations are equal, or equal after
       dropping one leading space from one side: the dummy-prefix '▁' a SentencePiece tokenizer adds);
    2. the path pairs j with exactly one source token s and s with no other target token (one-to-one);
    3. the pair costs zero (identical strings);
    4. both start at the same byte of that shared concatenation (the same piece of text, not two
       occurrences of the same word);
    5. the string is made of whole characters (no piece of a split multi-byte character).
    At exact positions the offsets alignment must give the same source row.
    """
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    m, n = len(target_tokens), len(source_tokens)
    if not m or not n:
        return EditAlignment(np.full(m, -1, dtype=np.int64), np.zeros(m, dtype=bool), 0.0)
    cost = cdist(source_tokens, target_tokens, scorer=Levenshtein.distance, dtype=np.int32).astype(np.float64)
    total = _warp(cost)
    pairs = _trace_back(total)
    sources, targets = pairs[:, 0], pairs[:, 1]

    rows = np.full(m, -1, dtype=np.int64)
    np.maximum.at(rows, targets, sources)

    exact = np.zeros(m, dtype=bool)
    shift = _dummy_prefix_shift(target_tokens, source_tokens)
    if shift is not None:
        t_starts = _byte_starts(target_tokens) - shift[0]
        s_starts = _byte_starts(source_tokens) - shift[1]
        one_to_one = (np.bincount(targets, minlength=m)[targets] == 1) & (np.bincount(sources, minlength=n)[sources] == 1)
        whole = np.array([_whole_characters(token) for token in target_tokens])
        keep = (
            one_to_one
            & (cost[sources, targets] == 0)
            & (t_starts[targets] == s_starts[sources])
            & whole[targets]
        )
        exact[targets[keep]] = True
    return EditAlignment(rows, exact, float(total[-1, -1]))


def align_by_edit_distance(target_tokens: list[str], source_tokens: list[str]) -> np.ndarray:
    """Source row per target token by FuseLLM's minimum-edit-distance alignment (see
    `edit_distance_alignment`); every target token is paired, so there is no -1 unless a side is empty."""
    return edit_distance_alignment(target_tokens, source_tokens).rows


def _warp(cost: np.ndarray) -> np.ndarray:
    """Cumulative DTW cost D (n, m): D[i, j] = cost[i, j] + min(D[i-1, j], D[i, j-1], D[i-1, j-1]).

    Cells of one anti-diagonal depend only on the two before it, so each diagonal is one numpy step.
    """
    n, m = cost.shape
    padded = np.full((n + 1, m + 1), np.inf)
    padded[0, 0] = 0.0
    for diagonal in range(2, n + m + 1):
        i = np.arange(max(1, diagonal - m), min(n, diagonal - 1) + 1)
        j = diagonal - i
        best = np.minimum(np.minimum(padded[i - 1, j], padded[i, j - 1]), padded[i - 1, j - 1])
        padded[i, j] = cost[i - 1, j - 1] + best
    return padded[1:, 1:]


def _trace_back(total: np.ndarray) -> np.ndarray:
    """The warping path as (source, target) pairs, from the end back to (0, 0)."""
    i, j = total.shape[0] - 1, total.shape[1] - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        diagonal = total[i - 1, j - 1] if i > 0 and j > 0 else np.inf
        source_step = total[i - 1, j] if i > 0 else np.inf
        target_step = total[i, j - 1] if j > 0 else np.inf
        if diagonal <= source_step and diagonal <= target_step:
            i, j = i - 1, j - 1
        elif source_step <= target_step:
            i -= 1
        else:
            j -= 1
        path.append((i, j))
    return np.array(path[::-1], dtype=np.int64)


def _utf8(token: str) -> bytes:
    # Normalized pieces of split characters are surrogate escapes of their raw bytes.
    return token.encode("utf-8", "surrogateescape")


def _byte_starts(tokens: list[str]) -> np.ndarray:
    lengths = np.fromiter((len(_utf8(token)) for token in tokens), dtype=np.int64, count=len(tokens))
    return np.concatenate([[0], np.cumsum(lengths)[:-1]])


def _dummy_prefix_shift(target_tokens: list[str], source_tokens: list[str]) -> tuple[int, int] | None:
    """Byte shifts that put both sequences on one coordinate, or None when they spell different text."""
    target = b"".join(_utf8(token) for token in target_tokens)
    source = b"".join(_utf8(token) for token in source_tokens)
    if target == source:
        return 0, 0
    if target == b" " + source:
        return 1, 0
    if source == b" " + target:
        return 0, 1
    return None


def _whole_characters(token: str) -> bool:
    try:
        token.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
