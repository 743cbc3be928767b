"""The model layer: one interface (generate, score) for local transformers models and any
OpenAI-compatible server, a response cache in front of both, a cost ledger, and the registry of
small models that ship inside PyPI packages."""

from llm_alloy.models.base import Backend
from llm_alloy.models.cache import CachedBackend, ResponseCache
from llm_alloy.models.factory import build_backend
from llm_alloy.models.ledger import Ledger
from llm_alloy.models.spec import ModelSpec, ModelsSection, Price
from llm_alloy.models.types import Completion, Conversation, GenerationParams, ModelError, ScoredText, TokenLogprob, Usage

__all__ = [
    "Backend", "CachedBackend", "Completion", "Conversation", "GenerationParams", "Ledger", "ModelError",
    "ModelSpec", "ModelsSection", "Price", "ResponseCache", "ScoredText", "TokenLogprob", "Usage", "build_backend",
]
