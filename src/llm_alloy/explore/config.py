"""The `alloy explore` config: models by name, the tree, the allocator, generation and training."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_alloy.distill.sft import SFTSettings
from llm_alloy.explore.rebirth import Recent, Reference, Test, check_options
from llm_alloy.models.spec import ModelsSection
from llm_alloy.models.types import GenerationParams


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TreeSettings(_Section):
    max_depth: int = Field(3, ge=1, le=6)
    window: int | None = Field(20, ge=2, description="outcomes kept per node for Introspection-Rebirth; null = global (no IR)")
    seed_domains: list[str] = Field(default_factory=list, description="optional main domains to start from (the paper starts empty)")
    sprout_samples: int = Field(5, ge=1, description="proposals per source when a new domain is opened")
    embedding_dedup: str | None = Field(None, description="sentence-embedding model (e.g. minilm-l6) to drop near-duplicate domains")
    similarity_threshold: float = Field(0.85, gt=0, le=1)


class AllocatorSettings(_Section):
    name: str = "dynabranches"
    params: dict[str, Any] = Field(default_factory=dict)


class RebirthSettings(_Section):
    """Introspection-Rebirth. The defaults are the paper's test; `reference: pre_window, test: two_sample,
    recent: loop` is our extension (window vs. the evidence before it, over the last loop's outcomes),
    which detects skill shifts far more often (benchmarks/results/allocation.md, check c)."""

    enabled: bool = True
    threshold: float = Field(0.1, gt=0, lt=1, description="p-value below which a node's posterior is reborn")
    reference: Reference = "posterior"
    test: Test = "one_sample"
    recent: Recent = "window"

    @model_validator(mode="after")
    def _combination(self) -> "RebirthSettings":
        check_options(self.reference, self.test, self.recent)
        return self


class VerifierSettings(_Section):
    """A programmatic check that decides the reward in a main domain instead of the leader's verdict."""

    kind: Literal["exact", "numeric", "math", "code"]
    tolerance: float = Field(1e-6, ge=0, description="numeric: relative tolerance")
    timeout_s: float = Field(5.0, gt=0, description="code: wall-clock limit per test run")
    memory_mb: int = Field(512, ge=16, description="code: address-space limit per test run")


class Roles(_Section):
    """Sampling per role: questions and domain proposals want variety, verdicts want determinism."""

    sprout: GenerationParams = GenerationParams(max_new_tokens=24, temperature=1.0)
    question: GenerationParams = GenerationParams(max_new_tokens=160, temperature=0.9)
    answer: GenerationParams = GenerationParams(max_new_tokens=256, temperature=0.0)
    judge: GenerationParams = GenerationParams(max_new_tokens=24, temperature=0.7)
    answer_system: str | None = Field(None, description="system prompt for every answering model (e.g. a length limit)")
    question_samples: int = Field(3, ge=1, description="tries for a valid question")
    judge_samples: int = Field(3, ge=1, description="tries for a usable verdict")


class TrainingSettings(SFTSettings):
    launcher: Literal["inline", "accelerate"] = Field(
        "inline", description="accelerate: each round runs under `accelerate launch` (several GPUs)"
    )
    num_processes: int = Field(1, ge=1, description="accelerate: processes (GPUs) per round")


class ExploreConfig(ModelsSection):
    sources: list[str] = Field(min_length=1, description="source models (they also lead: write questions and judge)")
    target: str = Field(description="the model being trained; a local model")
    loops: int = Field(3, ge=1)
    explore_steps: int = Field(2, ge=1)
    explore_batch: int = Field(200, ge=1, description="paths (questions) per exploration step")
    train_draws: int = Field(5, ge=0)
    train_batch: int = Field(48, ge=1)
    leader: Literal["random", "peer"] = Field("random", description="peer: elect the source the other judges prefer")
    seed: int = 0
    prompt_version: int = Field(1, ge=1)
    tree: TreeSettings = TreeSettings()
    allocator: AllocatorSettings = AllocatorSettings()
    train_allocator: AllocatorSettings | None = Field(None, description="allocator for the training mix (default: the same)")
    rebirth: RebirthSettings = RebirthSettings()
    roles: Roles = Roles()
    training: TrainingSettings = TrainingSettings()
    verifiers: dict[str, VerifierSettings] = Field(default_factory=dict, description="main domain name -> verifier")

    @model_validator(mode="after")
    def _references(self) -> "ExploreConfig":
        self.check_references(sources=self.sources, target=self.target)
        if self.model(self.target).backend != "local":
            raise ValueError(f"target: '{self.target}' must be a local model (it is trained)")
        if self.target in self.sources:
            raise ValueError(f"target: '{self.target}' cannot also be a source")
        return self


def demo_config() -> dict[str, Any]:
    """The shipped demo config, with Gemma3-270M as a second source when its package is installed."""
    import yaml
    from importlib import resources

    from llm_alloy.models.registry import PACKAGED_MODELS

    data = yaml.safe_load(resources.files("llm_alloy.explore").joinpath("demo.yaml").read_text())
    if PACKAGED_MODELS["gemma3-270m"].is_installed():
        data["models"].append({"name": "gemma3", "backend": "local", "path": "gemma3-270m"})
        data["sources"].append("gemma3")
    return data
