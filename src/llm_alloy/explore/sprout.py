"""Sprout: turn the sources' free-text proposals for a new domain into at most one new node name."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

MAX_WORDS = 3
# Models echo the prompt's own wording when they have nothing to say; a name made only of these is not a domain.
PLACEHOLDER_WORDS = frozenset(
    "unk unknown none na n a null nil tbd domain domains subdomain sub secondary main new name other misc "
    "general placeholder example".split()
)
# Wrapping that real outputs put around an otherwise fine name; stripped before judging.
WRAPPERS = "\"'`“”‘’*_ \t\r\n"

SimilarFn = Callable[[str, str], bool]


def _strip_wrapping(text: str) -> str:
    previous = None
    while text != previous:
        previous = text
        text = text.strip(WRAPPERS)
        if text.endswith("."):
            text = text[:-1]
    return text


def _judge(text: str) -> tuple[str | None, str]:
    """The normalised name, or None and the reason for rejecting it."""
    words = _strip_wrapping(text).split()
    if not words:
        return None, "empty"
    if len(words) > MAX_WORDS:
        return None, "too many words"
    if not all(word.isalpha() for word in words):
        return None, "not letters only"
    if all(word.lower() in PLACEHOLDER_WORDS for word in words):
        return None, "placeholder"
    return " ".join(word.capitalize() for word in words), "ok"


def normalize_domain(text: str) -> str | None:
    """Title Case name of 1-3 words of letters, or None if the proposal is not a usable domain."""
    return _judge(text)[0]


@dataclass
class SproutTally:
    """Valid proposals with their vote counts, and why the others were dropped (for the run report)."""

    votes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)

    def choose(self, rng: np.random.Generator) -> str | None:
        """Majority vote; ties broken at random."""
        if not self.votes:
            return None
        top = max(self.votes.values())
        tied = sorted(name for name, count in self.votes.items() if count == top)
        return tied[int(rng.integers(len(tied)))]


def tally_proposals(proposals: Iterable[str], existing: Iterable[str], is_similar: SimilarFn | None = None) -> SproutTally:
    """Validate, then drop names already in the tree (case-insensitively) and near-duplicates of them."""
    existing = list(existing)
    taken = {name.lower() for name in existing}
    verdicts: dict[str, str] = {}  # one similarity check per distinct name, however many votes it gets
    tally = SproutTally()
    for text in proposals:
        name, reason = _judge(text)
        if name is None:
            tally.rejected[reason] += 1
            continue
        if name not in verdicts:
            if name.lower() in taken:
                verdicts[name] = "existing"
            elif is_similar is not None and any(is_similar(name, other) for other in existing):
                verdicts[name] = "similar to existing"
            else:
                verdicts[name] = "ok"
        if verdicts[name] == "ok":
            tally.votes[name] += 1
        else:
            tally.rejected[verdicts[name]] += 1
    return tally


def choose_sprout(
    proposals: list[str], existing: set[str], rng: np.random.Generator, is_similar: SimilarFn | None = None
) -> str | None:
    """The winning new domain name, or None when no proposal survives."""
    return tally_proposals(proposals, existing, is_similar).choose(rng)
