"""`alloy distill logits`: logit-level fusion (FuseLLM / FusionX) from a YAML config to a trained target.

Stages, each recorded in OUT/state.json (atomically) when done and skipped on a rerun, so a killed
run resumes where it stopped:
  corpus          documents -> chunks of <= L target tokens (OUT/corpus/chunks.jsonl)
  sources/<name>  each source's top-k shards (OUT/sources/<name>/), resumable shard by shard
  vocab_maps      source -> target vocabulary maps, cached by vocabulary hash (OUT/vocab_maps/)
  train           the distillation (OUT/train/: adapter/, model/, fusion.safetensors, train_log.jsonl)
  report          OUT/report.html (+ OUT/report/*.png)

OUT/config.yaml keeps the config the run was started with. A rerun must use the same data settings
(target, sources, corpus, extraction); changed `fusion` or `training` sections retrain on the
existing shards. Under `accelerate launch` (several GPUs) the data stages run on the main process
while the others wait, and every process joins the training.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_alloy.config import ConfigError, load_config
from llm_alloy.distill.logit_trainer import LogitTrainSettings
from llm_alloy.files import RunStateFile, write_atomic
from llm_alloy.models.spec import ModelSpec

STATE_VERSION = 1
DATA_SECTIONS = ("target", "sources", "corpus", "extraction", "vocab_map_cache")


class LogitRunError(ValueError):
    """A run directory or input that cannot be used; one line naming the file."""


class SourceSpec(ModelSpec):
    """A source model: a declared model (see `models:` elsewhere) plus what logit extraction needs."""

    tokenizer: str | None = Field(
        None, description="the source's tokenizer (packaged name or folder); required for openai sources, defaults to path"
    )
    token_ids_in_response: bool = Field(False, description="openai: ask the server for token ids (vLLM)")

    @model_validator(mode="after")
    def _tokenizer(self) -> "SourceSpec":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"source '{self.name}': names become folder names; use letters, digits, '.', '_', '-'")
        if self.backend == "openai" and not self.tokenizer:
            raise ValueError(f"source '{self.name}': an openai source needs 'tokenizer' (the served model's, for offsets and ids)")
        return self

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.path or self.name


class CorpusSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="jsonl / parquet / txt file or saved HF dataset folder; relative to the config file")
    text_field: str = "text"
    limit: int | None = Field(None, ge=1, description="read at most this many documents")
    max_tokens: int = Field(256, ge=8, description="L: target tokens per training sequence")


class ExtractionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(10, ge=1, description="entries kept per position and source")
    shard_size: int = Field(256, ge=1, description="chunks per shard file (the unit of resumption)")


class FusionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = Field("fusionx", description="mince | avgce | fusionx")
    params: dict[str, Any] = Field(default_factory=dict)


class LogitDistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=1, description="the model trained: packaged name, folder or hub id")
    sources: list[SourceSpec] = Field(min_length=1)
    corpus: CorpusSettings
    extraction: ExtractionSettings = ExtractionSettings()
    fusion: FusionSettings = FusionSettings()
    training: LogitTrainSettings = LogitTrainSettings()
    vocab_map_cache: str | None = Field(None, description="folder shared across runs; default OUT/vocab_maps")

    @model_validator(mode="after")
    def _check(self) -> "LogitDistillConfig":
        from llm_alloy.distill.fusion import FusionConfigError, make_fusion

        names = [s.name for s in self.sources]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"sources: names must be unique: {', '.join(duplicated)} declared twice")
        try:
            make_fusion(self.fusion.method, len(self.sources), **self.fusion.params)
        except FusionConfigError as error:
            raise ValueError(f"fusion: {error}") from None
        return self


def load_logit_config(path: str | Path) -> LogitDistillConfig:
    """The config, with a relative corpus path (and cache folder) taken relative to the YAML file."""
    path = Path(path)
    config = load_config(path, LogitDistillConfig)
    here = path.resolve().parent
    corpus = config.corpus.model_copy(update={"path": str(here / config.corpus.path)})
    cache = str(here / config.vocab_map_cache) if config.vocab_map_cache else None
    return config.model_copy(update={"corpus": corpus, "vocab_map_cache": cache})


def demo_config_path() -> Path:
    return Path(__file__).with_name("logits_demo.yaml")


# --- run directory ------------------------------------------------------------------------------------


@dataclass
class RunState(RunStateFile):
    version: ClassVar[int] = STATE_VERSION
    error: ClassVar[type[Exception]] = LogitRunError

    done: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def stage_names(config: LogitDistillConfig) -> list[str]:
    return ["corpus", *(f"sources/{s.name}" for s in config.sources), "vocab_maps", "train", "report"]


@dataclass
class LogitRunResult:
    out_dir: Path
    model_dir: Path
    adapter_dir: Path | None
    report: Path
    steps: int
    log: list[dict]


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _wait_for_all_processes() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


class LogitRun:
    def __init__(self, config: LogitDistillConfig, out: Path, progress: bool, say: Callable[[str], None]) -> None:
        self.config, self.out, self.progress, self.say = config, Path(out), progress, say
        self.state_path = self.out / "state.json"
        self.main = _is_main_process()
        if self.main:
            self._claim_directory()
        _wait_for_all_processes()  # the others read the state only once the main process has settled it
        self.state = RunState.load(self.state_path)

    def _claim_directory(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self.out / "config.yaml"
        current = self.config.model_dump(mode="json")
        if saved.exists():
            try:
                previous = LogitDistillConfig.model_validate(yaml.safe_load(saved.read_text())).model_dump(mode="json")
            except Exception:
                raise LogitRunError(f"{saved}: unreadable config of an earlier run; use a new directory") from None
            changed = [key for key in DATA_SECTIONS if previous[key] != current[key]]
            if changed:
                raise LogitRunError(
                    f"{self.out}: holds a run with different {', '.join(changed)}; resume with the same data settings or use a new directory"
                )
            if previous != current:
                state = RunState.load(self.state_path)
                state.done = [stage for stage in state.done if stage not in ("train", "report")]
                state.save(self.state_path)
                self.say("fusion/training settings changed: retraining on the existing shards")
        write_atomic(saved, yaml.safe_dump(current, sort_keys=False))

    # -- stages ----------------------------------------------------------------------------------------
    def run(self) -> LogitRunResult:
        data_stages = stage_names(self.config)[:-2]
        if self.main:
            for stage in data_stages:
                self._stage(stage)
        else:
            self._wait_for(data_stages)
        self._stage("train")
        if self.main:
            self._stage("report")
        from llm_alloy.distill.logit_trainer import load_train_log

        train = self.out / "train"
        adapter = train / "adapter"
        return LogitRunResult(
            out_dir=self.out,
            model_dir=train / "model",
            adapter_dir=adapter if adapter.exists() else None,
            report=self.out / "report.html",
            steps=self.state.metrics.get("train", {}).get("steps", 0),
            log=load_train_log(train / "train_log.jsonl"),
        )

    def _stage(self, stage: str) -> None:
        if stage in self.state.done:
            self.say(f"{stage}: done earlier, skipped")
            return
        started = time.perf_counter()
        if stage == "corpus":
            self._corpus()
        elif stage.startswith("sources/"):
            self._source(stage.removeprefix("sources/"))
        elif stage == "vocab_maps":
            self._vocab_maps()
        elif stage == "train":
            self._train()
        else:
            from llm_alloy.report.logit_report import write_logit_report

            write_logit_report(self.out)
        if self.main:
            self.state.metrics.setdefault("seconds", {})[stage] = round(time.perf_counter() - started, 2)
            self.state.done.append(stage)
            self.state.save(self.state_path)
        self.say(f"{stage}: done in {time.perf_counter() - started:.1f} s")

    def _wait_for(self, stages: list[str]) -> None:
        """Other processes of a launched run poll the state file: a barrier would time out during a
        long extraction."""
        while not set(stages) <= set(self.state.done):
            time.sleep(2.0)
            self.state = RunState.load(self.state_path)

    def _target_tokenizer(self):
        from llm_alloy.distill.vocab_map import load_tokenizer

        return load_tokenizer(self.config.target)

    def _chunks_path(self) -> Path:
        return self.out / "corpus" / "chunks.jsonl"

    def _chunks(self) -> list:
        from llm_alloy.distill.corpus import Chunk

        lines = self._chunks_path().read_text(encoding="utf-8").splitlines()
        return [Chunk(**json.loads(line)) for line in lines]

    def _corpus(self) -> None:
        from tqdm.auto import tqdm

        from llm_alloy.distill.corpus import chunk_corpus, read_corpus

        settings = self.config.corpus
        texts = read_corpus(settings.path, settings.text_field, settings.limit)
        chunks = chunk_corpus(texts, self._target_tokenizer(), settings.max_tokens)
        rows = [
            json.dumps({"id": chunk.id, "text": chunk.text}, ensure_ascii=False) + "\n"
            for chunk in tqdm(chunks, desc="chunking", unit="chunk", disable=not self.progress)
        ]
        if not rows:
            raise LogitRunError(f"{settings.path}: the corpus has no text")
        write_atomic(self._chunks_path(), "".join(rows))
        self.state.metrics["chunks"] = len(rows)

    def _source(self, name: str) -> None:
        import numpy as np

        from llm_alloy.distill.topk import extract_local, extract_openai

        spec = next(s for s in self.config.sources if s.name == name)
        chunks = self._chunks()
        k, shard_size = self.config.extraction.top_k, self.config.extraction.shard_size
        if spec.backend == "local":
            from llm_alloy.models.local import LocalBackend

            backend = LocalBackend(spec.name, spec.path or spec.name, spec.device, spec.dtype, spec.batch_size)
            shards = extract_local(chunks, self.out, backend, k, shard_size, spec.batch_size, self.progress)
            del backend
            gc.collect()  # the source model goes before the next one loads
        else:
            from llm_alloy.models.openai_backend import RetryPolicy

            shards = extract_openai(
                chunks, self.out, spec.name, spec.base_url or "", spec.model or spec.name, spec.tokenizer_path, k,
                spec.api_key_env, shard_size, spec.max_concurrency, spec.timeout_s,
                RetryPolicy(max_retries=spec.max_retries, backoff_base_s=spec.backoff_base_s),
                spec.token_ids_in_response, self.progress,
            )
        ces = np.array([shards.sequence(chunk.id).ce for chunk in chunks], dtype=float)
        self.state.metrics.setdefault("sources", {})[name] = {
            "mean_ce": float(np.nanmean(ces)) if np.isfinite(ces).any() else None,
            "bytes_per_token": round(shards.bytes_per_token(), 2),
        }

    def _vocab_cache(self) -> Path:
        return Path(self.config.vocab_map_cache) if self.config.vocab_map_cache else self.out / "vocab_maps"

    def _vocab_maps(self, target_tokenizer=None) -> list:
        import numpy as np

        from llm_alloy.distill.vocab_map import load_tokenizer, vocab_map_for

        target_tokenizer = target_tokenizer or self._target_tokenizer()
        maps = []
        for spec in self.config.sources:
            vocab_map = vocab_map_for(load_tokenizer(spec.tokenizer_path), target_tokenizer, self._vocab_cache(), progress=self.progress)
            info = self.state.metrics.setdefault("sources", {}).setdefault(spec.name, {})
            info["exact_share"] = float(np.mean(vocab_map.exact))
            info["mapped_share"] = vocab_map.coverage
            maps.append(vocab_map)
        return maps

    def _train(self) -> None:
        from llm_alloy.distill.fusion import make_fusion
        from llm_alloy.distill.logit_trainer import AlignedDataset, train_logit_distill
        from llm_alloy.distill.shards import SourceShards, source_dir

        config = self.config
        target_tokenizer = self._target_tokenizer()
        shards = [SourceShards(source_dir(self.out, spec.name)) for spec in config.sources]
        for spec, shard in zip(config.sources, shards):
            if not shard.complete:
                raise LogitRunError(f"{shard.directory}: the shards of source '{spec.name}' are incomplete; rerun to finish them")
        dataset = AlignedDataset(self._chunks(), target_tokenizer, shards, self._vocab_maps(target_tokenizer), config.corpus.max_tokens)
        fusion = make_fusion(config.fusion.method, len(config.sources), **config.fusion.params)
        result = train_logit_distill(
            config.target, dataset, fusion, config.training, self.out / "train", [s.name for s in config.sources], self.progress
        )
        losses = result.losses()
        edge = max(1, min(5, len(losses) // 4))
        self.state.metrics["target"] = config.target
        self.state.metrics["fusion"] = config.fusion.method
        self.state.metrics["train"] = {
            "steps": result.steps,
            "loss_start": sum(losses[:edge]) / edge,
            "loss_end": sum(losses[-edge:]) / edge,
        }


def run_logit_distill(
    config: LogitDistillConfig, out_dir: str | Path, progress: bool = True, say: Callable[[str], None] | None = None
) -> LogitRunResult:
    """Run (or resume) every stage of logit-level fusion into `out_dir`; see the module doc."""
    if say is None:
        say = (lambda line: print(line, file=sys.stderr)) if progress else (lambda line: None)
    return LogitRun(config, Path(out_dir), progress, say).run()


def main() -> None:
    """python -m llm_alloy.distill.logit_run CONFIG.yaml OUT/ (also under `accelerate launch`)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    try:
        result = run_logit_distill(load_logit_config(args.config), args.out, progress=not args.no_progress)
    except (ConfigError, LogitRunError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if _is_main_process():
        print(f"trained {result.steps} steps; model {result.model_dir}; report {result.report}")


if __name__ == "__main__":
    main()
