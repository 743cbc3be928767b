"""`alloy explore`: the Bohdi loop over a run directory that can be killed and resumed at any point.

A run is a fixed sequence of stages (per loop: rebirth, exploration steps, training). After each
stage the run writes its outputs, a tree snapshot, and then state.json (atomically) naming the
stages done, the snapshot to resume from, the ledger and the metrics. A killed run restarts the first
unfinished stage from the last snapshot; every model call it had already made comes from the cache.

Layout of OUT/: config.yaml, state.json, tree.json (latest), tree/<stage>.json, data/*.jsonl
(records per step, training mix per loop, plus the mix as an HF dataset), ledger.json,
checkpoints/loop<L>/ (adapter/, model/), cache.sqlite, report.html.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import yaml

from llm_alloy.explore.allocators import draw_training_mix, make_allocator
from llm_alloy.explore.config import ExploreConfig
from llm_alloy.explore.engine import Explorer
from llm_alloy.explore.prompts import ParseLog
from llm_alloy.explore.rebirth import apply_rebirth
from llm_alloy.explore.tree import KnowledgeTree
from llm_alloy.files import RunStateFile, write_atomic
from llm_alloy.models.base import Backend
from llm_alloy.models.cache import ResponseCache
from llm_alloy.models.factory import build_backend
from llm_alloy.models.ledger import Ledger

STATE_VERSION = 1


class RunDirectoryError(ValueError):
    """A run directory that cannot be resumed; the message is one line naming the file."""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@dataclass
class RunState(RunStateFile):
    version: ClassVar[int] = STATE_VERSION
    error: ClassVar[type[Exception]] = RunDirectoryError

    done: list[str] = field(default_factory=list)
    tree: str | None = None
    target_path: str | None = None
    ledger: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    peer_wins: dict[str, int] = field(default_factory=dict)
    parse_log: dict[str, int] = field(default_factory=dict)


def stages(config: ExploreConfig) -> list[str]:
    names = []
    for loop in range(config.loops):
        if loop > 0 and config.rebirth.enabled and config.tree.window is not None:
            names.append(f"loop{loop}/rebirth")
        names += [f"loop{loop}/step{step}" for step in range(config.explore_steps)]
        names.append(f"loop{loop}/train")
    return names


def top_level_counts(paths: list[list[str]], rewards: list[int] | None = None) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for i, path in enumerate(paths):
        entry = counts.setdefault(path[0], {"n": 0, "losses": 0})
        entry["n"] += 1
        entry["losses"] += rewards[i] if rewards is not None else 0
    return counts


class ExploreRun:
    def __init__(
        self,
        config: ExploreConfig,
        out: Path,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.out = Path(out)
        self.log = log
        self._claim_directory()
        self.state = RunState.load(self.out / "state.json")
        self.cache = ResponseCache(self.out / "cache.sqlite")
        self.ledger = Ledger.from_rows(self.state.ledger)
        self.parse_log = ParseLog()
        self.parse_log.counts.update(self.state.parse_log)
        self.tree = self._load_tree()
        self.sources = {name: build_backend(config.model(name), self.cache) for name in config.sources}
        self.explore_allocator = make_allocator(config.allocator.name, **config.allocator.params)
        train = config.train_allocator or config.allocator
        self.train_allocator = make_allocator(train.name, **train.params)
        self._target_backend: Backend | None = None

    # -- directory -------------------------------------------------------------------------------
    def _claim_directory(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self.out / "config.yaml"
        canonical = yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False)
        if saved.exists():
            try:
                previous = ExploreConfig.model_validate(yaml.safe_load(saved.read_text()))
            except Exception:
                raise RunDirectoryError(f"{saved}: unreadable config of an earlier run; use a new directory") from None
            if previous.model_dump() != self.config.model_dump():
                raise RunDirectoryError(
                    f"{self.out}: holds a run started with a different config; resume with the same config or use a new directory"
                )
        else:
            write_atomic(saved, canonical)

    def _load_tree(self) -> KnowledgeTree:
        if self.state.tree is None:
            settings = self.config.tree
            if settings.seed_domains:
                return KnowledgeTree.seeded(settings.seed_domains, settings.max_depth, settings.window)
            return KnowledgeTree(settings.max_depth, settings.window)
        return KnowledgeTree.load(self.out / self.state.tree)

    def target_path(self) -> str:
        return self.state.target_path or (self.config.model(self.config.target).path or self.config.target)

    def _target(self) -> Backend:
        path = self.target_path()
        if self._target_backend is None or self._target_backend.model_id != path:
            spec = self.config.model(self.config.target).model_copy(update={"path": path})
            self._target_backend = build_backend(spec, self.cache)
        return self._target_backend

    def _similarity(self) -> Callable[[str, str], bool] | None:
        name = self.config.tree.embedding_dedup
        if name is None:
            return None
        from llm_alloy.explore.similarity import EmbeddingSimilarity

        return EmbeddingSimilarity(name, self.config.tree.similarity_threshold)

    # -- stages ----------------------------------------------------------------------------------
    def run(self, on_stage: Callable[[str, dict], None] | None = None) -> RunState:
        similarity = self._similarity()
        for index, stage in enumerate(stages(self.config)):
            if stage in self.state.done:
                continue
            loop_name, kind = stage.split("/")
            loop = int(loop_name.removeprefix("loop"))
            # Seeded by position, so a resumed stage draws exactly what the interrupted one drew.
            rng = np.random.default_rng([self.config.seed, index])
            if kind == "rebirth":
                settings = self.config.rebirth
                reborn = apply_rebirth(
                    self.tree, settings.threshold, reference=settings.reference, test=settings.test, recent=settings.recent
                )
                metrics = {"rebirths": [list(p) for p in reborn]}
            elif kind == "train":
                metrics = self._train(loop, rng)
            else:
                metrics = self._explore(loop, int(kind[4:]), rng, similarity)
            metrics = {"stage": stage, "loop": loop, **metrics}
            self._finish_stage(stage, metrics)
            if on_stage:
                on_stage(stage, metrics)
        return self.state

    def _explore(self, loop: int, step: int, rng: np.random.Generator, similarity) -> dict[str, Any]:
        explorer = Explorer(self.config, self.sources, self._target(), self.ledger, self.parse_log, similarity)
        explorer.peer_wins.update(self.state.peer_wins)
        result = explorer.step(self.tree, self.explore_allocator, rng, loop, step)
        self.state.peer_wins = explorer.peer_wins
        write_jsonl(self.out / "data" / f"loop{loop}_step{step}.jsonl", result.records)
        return {
            "kind": "explore",
            "step": step,
            "leader": result.leader,
            "questions": len(result.records),
            "dropped": result.dropped,
            "abandoned_paths": result.abandoned_paths,
            "per_domain": top_level_counts([r["path"] for r in result.records], [r["reward"] for r in result.records]),
            "domains": len(list(self.tree.iter_nodes())),
        }

    def _train(self, loop: int, rng: np.random.Generator) -> dict[str, Any]:
        from llm_alloy.distill.sft import train_sft, train_sft_launched

        self.tree.close_exploration()
        explored = [
            json.loads(line)
            for step in range(self.config.explore_steps)
            for line in (self.out / "data" / f"loop{loop}_step{step}.jsonl").read_text().splitlines()
        ]
        if explored:
            self._save_dataset(explored, self.out / "data" / f"loop{loop}_hf")
        n = self.config.train_draws * self.config.train_batch
        records = draw_training_mix(self.tree, self.train_allocator, rng, n)
        mix = [{"question": r["question"], "answer": r["answer"], "path": r["path"]} for r in records]
        write_jsonl(self.out / "data" / f"loop{loop}_train.jsonl", mix)
        metrics: dict[str, Any] = {"kind": "train", "examples": len(mix), "mix": top_level_counts([r["path"] for r in mix])}
        if not mix:
            self.log(f"loop {loop}: no usable records yet; the target is not trained this loop")
            return metrics
        self._save_dataset(mix, self.out / "data" / f"loop{loop}_train_hf")
        spec = self.config.model(self.config.target)
        settings = self.config.training
        arguments = (self.target_path(), [(r["question"], r["answer"]) for r in mix], self.out / "checkpoints" / f"loop{loop}")
        if settings.launcher == "accelerate":
            result = train_sft_launched(*arguments, settings, settings.num_processes, self.config.seed + loop, spec.device)
        else:
            result = train_sft(*arguments, settings, seed=self.config.seed + loop, device=spec.device)
        self.state.target_path = str(result.model_dir)
        metrics.update(steps=result.steps, losses=result.losses, model_dir=str(result.model_dir))
        return metrics

    @staticmethod
    def _save_dataset(rows: list[dict], folder: Path) -> None:
        from datasets import Dataset

        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        Dataset.from_list(rows).save_to_disk(str(staging))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)

    def _finish_stage(self, stage: str, metrics: dict) -> None:
        snapshot = f"tree/{stage.replace('/', '_')}.json"
        self.tree.save(self.out / snapshot)
        self.tree.save(self.out / "tree.json")
        self.state.done.append(stage)
        self.state.tree = snapshot
        self.state.metrics.append(metrics)
        self.state.ledger = self.ledger.to_rows()
        self.state.parse_log = self.parse_log.to_dict()
        self.state.save(self.out / "state.json")
        self.ledger.save(self.out / "ledger.json")

    def close(self) -> None:
        self.cache.close()
