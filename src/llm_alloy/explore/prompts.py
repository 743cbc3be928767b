"""Versioned prompt templates (package data) and the parsers that read real model output.

Every parser returns None for what it could not use and counts why in a ParseLog, so a run reports
how often a model ignored the format instead of crashing on it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from string import Template

import yaml

LEVEL_INSTRUCTIONS = {
    1: "a main domain taught in education, as broad as possible.",
    2: "a secondary domain of {parent}.",
    3: "a specific sub-domain of {path}.",
}
"""What Sprout asks for at each depth; deeper levels reuse the last."""
TONES = ("friendly", "formal", "humorous", "curious", "matter-of-fact")
REFUSALS = ("i'm sorry", "i am sorry", "i cannot", "i can't", "as an ai", "i apologize", "i'm unable")
MIN_QUESTION_CHARS = 30


class ConversationTemplate:
    """A few-shot chat (package data `templates/NAME.vVERSION.yaml`) with $placeholders in its turns."""

    def __init__(self, name: str, version: int = 1) -> None:
        self.name, self.version = name, version
        text = resources.files("llm_alloy.explore").joinpath("templates", f"{name}.v{version}.yaml").read_text()
        self.turns = [(turn["role"], Template(turn["content"])) for turn in yaml.safe_load(text)]

    def render(self, **values: str) -> list[dict[str, str]]:
        return [{"role": role, "content": content.substitute(values)} for role, content in self.turns]


def load_styles(version: int = 1) -> list[str]:
    text = resources.files("llm_alloy.explore").joinpath("templates", f"styles.v{version}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class ParseLog:
    """What the parsers accepted and rejected, per parser and reason."""

    counts: Counter[str] = field(default_factory=Counter)

    def note(self, parser: str, outcome: str) -> None:
        self.counts[f"{parser}:{outcome}"] += 1

    def merge(self, other: "ParseLog") -> None:
        self.counts.update(other.counts)

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def _tagged(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>\s*(.*?)\s*(?:</{tag}>|$)", text, flags=re.DOTALL | re.IGNORECASE)
    return match.group(1).strip() if match and match.group(1).strip() else None


def parse_domain(text: str, log: ParseLog) -> str | None:
    """The proposed name as written (validation and normalisation happen in sprout)."""
    found = _tagged(text, "domain")
    if found is not None:
        log.note("domain", "tagged")
        return found
    # Small models often answer with the bare name, or "Domain: Name".
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        log.note("domain", "empty")
        return None
    candidate = re.sub(r"^(?:domain|answer|name)\s*:\s*", "", lines[0], flags=re.IGNORECASE)
    # "Science, Math, English": a list where one name was asked for; the first item is the proposal.
    log.note("domain", "untagged")
    return re.split(r"[,;]", candidate)[0]


def parse_question(text: str, log: ParseLog) -> str | None:
    question = _tagged(text, "question")
    if question is None:
        question = re.sub(r"^(?:here is|here's)[^:\n]*:\s*", "", text.strip(), flags=re.IGNORECASE)
        question = re.sub(r"^question\s*:\s*", "", question, flags=re.IGNORECASE).strip()
        log.note("question", "untagged")
    if len(question) <= MIN_QUESTION_CHARS:
        log.note("question", "too short")
        return None
    if any(refusal in question[:80].lower() for refusal in REFUSALS):
        log.note("question", "refusal")
        return None
    log.note("question", "ok")
    return question


def parse_verdict(text: str, n_answers: int, log: ParseLog) -> int | None:
    """0-based index of the chosen answer."""
    tagged = _tagged(text, "best")
    # A verdict is a short number; a run of digits longer than that is noise, not a choice.
    number = r"(?<!\d)(\d{1,4})(?!\d)"
    if tagged is not None:
        match = re.search(number, tagged)
    else:
        match = re.search(r"(?:best|answer|candidate)\D{0,20}?" + number, text, flags=re.IGNORECASE) or re.search(
            number, text
        )
    if match is None:
        log.note("verdict", "no number")
        return None
    choice = int(match.group(1))
    if not 1 <= choice <= n_answers:
        log.note("verdict", "out of range")
        return None
    log.note("verdict", "tagged" if tagged is not None else "untagged")
    return choice - 1


def parse_tagged(text: str, tag: str, log: ParseLog) -> str | None:
    """A reference answer or test block a verified domain's question carries."""
    found = _tagged(text, tag)
    log.note(tag, "ok" if found else "missing")
    return found
