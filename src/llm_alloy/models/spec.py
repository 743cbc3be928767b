"""Models are declared once (name, backend, where, defaults, price) and referenced by name everywhere."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_alloy.models.types import GenerationParams


class Price(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")
    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    backend: Literal["local", "openai"]
    path: str | None = Field(None, description="local: packaged short name, local folder or hub id")
    base_url: str | None = Field(None, description="openai: the server's base URL, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="openai: the served model id (defaults to name)")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(8, ge=1)
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)
    backoff_base_s: float = Field(0.5, ge=0)
    generation: GenerationParams = GenerationParams()
    price: Price = Price()

    @model_validator(mode="after")
    def _where(self) -> "ModelSpec":
        if self.backend == "local" and not self.path:
            raise ValueError(f"model '{self.name}': a local model needs 'path'")
        if self.backend == "openai" and not self.base_url:
            raise ValueError(f"model '{self.name}': an openai model needs 'base_url'")
        return self


class ModelsSection(BaseModel):
    """The `models:` list every method config starts with."""

    model_config = ConfigDict(extra="forbid")
    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "ModelsSection":
        names = [m.name for m in self.models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"model names must be unique: {', '.join(duplicated)} declared twice")
        return self

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise ValueError(f"unknown model '{name}' (declared: {', '.join(m.name for m in self.models)})")

    def check_references(self, **references: str | list[str] | None) -> None:
        """Every model a method names must be declared; raised inside a validator it names the field."""
        for field, value in references.items():
            for name in [value] if isinstance(value, str) else (value or []):
                if name not in {m.name for m in self.models}:
                    raise ValueError(
                        f"{field}: unknown model '{name}' (declared: {', '.join(m.name for m in self.models)})"
                    )
