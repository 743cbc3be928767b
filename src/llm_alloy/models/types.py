"""The values that cross the model layer's boundary, shared by every backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

Conversation = list[dict[str, str]]
"""A chat: [{"role": "system"|"user"|"assistant", "content": "..."}, ...]."""

FinishReason = Literal["stop", "length"]

SampleIndex = int | Sequence[int]
"""Which sample of a request this is: one index for the whole batch, or one per conversation."""


def sample_indices(sample_index: SampleIndex, n: int) -> list[int]:
    if isinstance(sample_index, int):
        return [sample_index] * n
    if len(sample_index) != n:
        raise ValueError(f"{len(sample_index)} sample indices for {n} conversations")
    return list(sample_index)


class GenerationParams(BaseModel):
    """Sampling settings for one generate call. temperature 0 means greedy decoding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    top_logprobs: int = Field(0, ge=0, le=20, description="per-token top-k log-probabilities to return; 0 = none")
    seed: int = 0

    def merged(self, **overrides: Any) -> "GenerationParams":
        return self.model_copy(update={k: v for k, v in overrides.items() if v is not None})


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __iadd__(self, other: "Usage") -> "Usage":
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        return self


@dataclass
class TokenLogprob:
    """One token with its log-probability and, optionally, the top-k alternatives at its position."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)
    token_id: int | None = None
    top_ids: list[int] | None = None


@dataclass
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage
    logprobs: list[TokenLogprob] | None = None
    served_model: str | None = None
    """The model id the server echoed back, which may differ from the one asked for (aliases, routing)."""
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cached")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], cached: bool = False) -> "Completion":
        logprobs = data.get("logprobs")
        return cls(
            text=data["text"],
            finish_reason=data["finish_reason"],
            usage=Usage(**data["usage"]),
            logprobs=None if logprobs is None else [_token_from_dict(t) for t in logprobs],
            served_model=data.get("served_model"),
            cached=cached,
        )


@dataclass
class ScoredText:
    """Log-likelihood of a continuation given a prompt, token by token (continuation tokens only)."""

    tokens: list[TokenLogprob]
    usage: Usage = field(default_factory=Usage)

    @property
    def logprob(self) -> float:
        return sum(t.logprob for t in self.tokens)


def _token_from_dict(data: dict[str, Any]) -> TokenLogprob:
    return TokenLogprob(
        token=data["token"],
        logprob=data["logprob"],
        top=[(str(t), float(lp)) for t, lp in data.get("top", [])],
        token_id=data.get("token_id"),
        top_ids=data.get("top_ids"),
    )


OnResult = Callable[[int, Completion], None]
"""Called with (index in the batch, completion) as each completion arrives, so it can be stored at once."""


class ModelError(RuntimeError):
    """A model call that cannot succeed (unreachable server, refused request); the message is one line."""
