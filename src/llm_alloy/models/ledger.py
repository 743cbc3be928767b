"""Token usage and cost per model and role, for every call a run makes (cached calls cost nothing)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_alloy.files import write_atomic
from llm_alloy.models.spec import Price
from llm_alloy.models.types import Completion


@dataclass
class LedgerEntry:
    model: str
    role: str
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class Ledger:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], LedgerEntry] = {}

    def record(self, model: str, role: str, completions: list[Completion], price: Price | None = None) -> None:
        entry = self.entries.setdefault((model, role), LedgerEntry(model, role))
        for completion in completions:
            if completion.cached:
                entry.cached_calls += 1
                continue
            entry.calls += 1
            entry.prompt_tokens += completion.usage.prompt_tokens
            entry.completion_tokens += completion.usage.completion_tokens
            if price is not None:
                entry.cost_usd += price.cost(completion.usage.prompt_tokens, completion.usage.completion_tokens)

    @property
    def total_cost(self) -> float:
        return sum(e.cost_usd for e in self.entries.values())

    def rows(self) -> list[LedgerEntry]:
        return sorted(self.entries.values(), key=lambda e: (e.model, e.role))

    def to_rows(self) -> list[dict]:
        return [asdict(e) for e in self.rows()]

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "Ledger":
        ledger = cls()
        for row in rows:
            ledger.entries[(row["model"], row["role"])] = LedgerEntry(**row)
        return ledger

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_rows(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Ledger":
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            return cls.from_rows(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: corrupt ledger ({error})") from None
