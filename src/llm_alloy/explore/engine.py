"""One exploration step of Bohdi: sample paths (sprouting new domains), the leader writes questions,
target and sources answer, the leader (or a verifier) picks the best answer, rewards go to the tree."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from llm_alloy.evaluate.verifiers import verify_answer
from llm_alloy.explore.allocators import Allocator, sample_path
from llm_alloy.explore.config import ExploreConfig, VerifierSettings
from llm_alloy.explore.prompts import (
    LEVEL_INSTRUCTIONS,
    TONES,
    ConversationTemplate,
    ParseLog,
    load_styles,
    parse_domain,
    parse_question,
    parse_tagged,
    parse_verdict,
)
from llm_alloy.explore.quality import passes_gates
from llm_alloy.explore.sprout import tally_proposals
from llm_alloy.explore.tree import KnowledgeTree
from llm_alloy.models.base import Backend
from llm_alloy.models.ledger import Ledger
from llm_alloy.models.types import Completion, Conversation, GenerationParams, SampleIndex

SimilarFn = Callable[[str, str], bool]

VERIFIED_FORMATS = {
    "code": "The answer must be Python code in a code block. After the question, give assert statements that test "
    "a correct solution between <tests> and </tests>.",
    "exact": "The answer must be a short exact phrase. After the question, give the correct answer between "
    "<answer> and </answer>.",
    "numeric": "The answer must be a number. After the question, give the correct number between <answer> and </answer>.",
    "math": "The answer must be a mathematical expression or number. After the question, give the correct answer "
    "between <answer> and </answer>.",
}


@dataclass
class StepResult:
    records: list[dict] = field(default_factory=list)
    dropped: int = 0
    abandoned_paths: int = 0
    leader: str = ""


class Explorer:
    """Runs exploration steps against live backends; the tree and the ledger are mutated in place."""

    def __init__(
        self,
        config: ExploreConfig,
        sources: dict[str, Backend],
        target: Backend,
        ledger: Ledger,
        parse_log: ParseLog,
        is_similar: SimilarFn | None = None,
    ) -> None:
        self.config = config
        self.sources = sources
        self.target = target
        self.ledger = ledger
        self.parse_log = parse_log
        self.is_similar = is_similar
        version = config.prompt_version
        self.sprout_template = ConversationTemplate("sprout", version)
        self.question_template = ConversationTemplate("question", version)
        self.judge_template = ConversationTemplate("judge", version)
        self.styles = load_styles(version)
        self.peer_wins: dict[str, int] = {name: 0 for name in sources}

    # -- model calls, always through here so the ledger sees every one ---------------------------
    def _generate(
        self,
        backend: Backend,
        role: str,
        conversations: list[Conversation],
        params: GenerationParams,
        sample: SampleIndex = 0,
    ) -> list[Completion]:
        if not conversations:
            return []
        completions = backend.generate(conversations, params, sample_index=sample)
        self.ledger.record(backend.name, role, completions, self.config.model(backend.name).price)
        return completions

    # -- leader ----------------------------------------------------------------------------------
    def draw_leader(self, rng: np.random.Generator) -> str:
        names = list(self.sources)
        if self.config.leader == "peer" and sum(self.peer_wins.values()) > 0:
            # Elected by the judges' verdicts so far: how often each source's answer was chosen best.
            wins = np.array([self.peer_wins[n] for n in names], dtype=float) + 1.0
            return names[int(rng.choice(len(names), p=wins / wins.sum()))]
        return names[int(rng.integers(len(names)))]

    # -- sprout ----------------------------------------------------------------------------------
    def sprouter(self, tree: KnowledgeTree, rng: np.random.Generator) -> Callable[[tuple[str, ...], int], str | None]:
        settings = self.config.tree

        def sprout(parent_path: tuple[str, ...], level: int) -> str | None:
            parent = tree.node(parent_path)
            instruction = LEVEL_INSTRUCTIONS[min(level, 3)].format(
                parent=parent_path[-1] if parent_path else "", path=" > ".join(parent_path)
            )
            conversation = self.sprout_template.render(
                existing=", ".join(parent.children) or "none", level_instruction=instruction
            )
            proposals = []
            samples = list(range(settings.sprout_samples))
            for backend in self.sources.values():
                # The k samples of one request share a batch, told apart by their sample indices.
                outputs = self._generate(backend, "sprout", [conversation] * len(samples), self.config.roles.sprout, samples)
                for completion in outputs:
                    proposal = parse_domain(completion.text, self.parse_log)
                    if proposal is not None:
                        proposals.append(proposal)
            tally = tally_proposals(proposals, tree.domain_names(), self.is_similar)
            for reason, count in tally.rejected.items():
                self.parse_log.counts[f"sprout:{reason}"] += count
            return tally.choose(rng)

        return sprout

    # -- one step --------------------------------------------------------------------------------
    def step(self, tree: KnowledgeTree, allocator: Allocator, rng: np.random.Generator, loop: int, index: int) -> StepResult:
        result = StepResult(leader=self.draw_leader(rng))
        leader = self.sources[result.leader]
        sprout = self.sprouter(tree, rng)
        paths = []
        for _ in range(self.config.explore_batch):
            path = sample_path(tree, allocator, rng, sprout)
            if path is None or len(path) < tree.max_depth:
                result.abandoned_paths += 1
            else:
                paths.append(path)
        questions = self._write_questions(leader, paths, rng)
        asked = [(path, q) for path, q in zip(paths, questions) if q is not None]
        result.dropped += len(paths) - len(asked)
        answers = self._answer([q["question"] for _, q in asked])
        verdicts = self._judge(leader, asked, answers, rng)
        for (path, question), answer_set, verdict in zip(asked, answers, verdicts):
            if verdict is None:
                result.dropped += 1
                continue
            best, reward, verified = verdict
            record = {
                "question": question["question"],
                "answer": answer_set[best][1] if best is not None else "",
                "best_model": answer_set[best][0] if best is not None else None,
                "answers": {name: text for name, text, _ in answer_set},
                "path": list(path),
                "style": question["style"],
                "leader": result.leader,
                "loop": loop,
                "step": index,
                "reward": reward,
                "verified": verified,
                "reference": question["reference"],
            }
            # An allocator that reads the target's own errors learns only from checkable questions.
            outcome = reward if allocator.signal == "loss" or verified else None
            tree.record(path, outcome, record if best is not None else None)
            result.records.append(record)
        return result

    def _write_questions(self, leader: Backend, paths: list[tuple[str, ...]], rng: np.random.Generator) -> list[dict | None]:
        styles = [self._style(rng) for _ in paths]
        conversations = []
        for path, style in zip(paths, styles):
            verifier = self.config.verifiers.get(path[0])
            conversations.append(
                self.question_template.render(
                    path=" > ".join(path), style=style, extra=" " + VERIFIED_FORMATS[verifier.kind] if verifier else ""
                )
            )
        found: list[dict | None] = [None] * len(paths)
        for sample in range(self.config.roles.question_samples):
            pending = [i for i, q in enumerate(found) if q is None]
            if not pending:
                break
            outputs = self._generate(leader, "question", [conversations[i] for i in pending], self.config.roles.question, sample)
            for i, completion in zip(pending, outputs):
                found[i] = self._read_question(completion.text, paths[i], styles[i])
        return found

    def _read_question(self, text: str, path: tuple[str, ...], style: str) -> dict | None:
        verifier = self.config.verifiers.get(path[0])
        reference = None
        if verifier is not None:
            reference = parse_tagged(text, "tests" if verifier.kind == "code" else "answer", self.parse_log)
            if reference is None:
                return None
            # The reference must not leak into the question the models answer.
            text = text.split("<tests>" if verifier.kind == "code" else "<answer>")[0]
        question = parse_question(text, self.parse_log)
        if question is None:
            return None
        return {"question": question, "style": style, "reference": reference}

    def _style(self, rng: np.random.Generator) -> str:
        style = self.styles[int(rng.integers(len(self.styles)))]
        return style.replace("$tone", TONES[int(rng.integers(len(TONES)))])

    def _answer(self, questions: list[str]) -> list[list[tuple[str, str, str]]]:
        """(model, answer, finish reason) for every model and question: target first, then sources,
        the models queried concurrently."""
        system = [{"role": "system", "content": self.config.roles.answer_system}] if self.config.roles.answer_system else []
        conversations = [system + [{"role": "user", "content": q}] for q in questions]
        models = [(self.target.name, self.target, "target-answer")] + [
            (name, backend, "source-answer") for name, backend in self.sources.items()
        ]
        params = self.config.roles.answer
        # Remote models answer concurrently in threads while the in-process ones take turns here.
        with ThreadPoolExecutor(max_workers=len(models)) as pool:
            remote = {
                i: pool.submit(self._generate, b, role, conversations, params)
                for i, (_, b, role) in enumerate(models)
                if not b.computes_in_process
            }
            local = {
                i: self._generate(b, role, conversations, params)
                for i, (_, b, role) in enumerate(models)
                if b.computes_in_process
            }
            outputs = [remote[i].result() if i in remote else local[i] for i in range(len(models))]
        return [
            [(name, outputs[m][i].text, outputs[m][i].finish_reason) for m, (name, _, _) in enumerate(models)]
            for i in range(len(questions))
        ]

    def _judge(
        self,
        leader: Backend,
        asked: list[tuple[tuple[str, ...], dict]],
        answers: list[list[tuple[str, str, str]]],
        rng: np.random.Generator,
    ) -> list[tuple[int | None, int, bool] | None]:
        """Per question (best answer index or None, reward, verified) or None when no usable verdict."""
        verdicts: list[tuple[int | None, int, bool] | None] = [None] * len(asked)
        judged = []
        for i, ((path, question), answer_set) in enumerate(zip(asked, answers)):
            verifier = self.config.verifiers.get(path[0])
            if verifier is not None:
                verdicts[i] = self._verify(verifier, question["reference"], answer_set)
            else:
                judged.append(i)
        orders = {i: rng.permutation(len(answers[i])) for i in judged}
        prompts = {}
        for i in judged:
            listing = "\n\n".join(f"[{n + 1}]\n{answers[i][j][1]}" for n, j in enumerate(orders[i]))
            prompts[i] = self.judge_template.render(question=asked[i][1]["question"], answers=listing)
        for sample in range(self.config.roles.judge_samples):
            pending = [i for i in judged if verdicts[i] is None]
            if not pending:
                break
            outputs = self._generate(leader, "judge", [prompts[i] for i in pending], self.config.roles.judge, sample)
            for i, completion in zip(pending, outputs):
                choice = parse_verdict(completion.text, len(answers[i]), self.parse_log)
                if choice is None:
                    continue
                best = int(orders[i][choice])
                name, text, finish_reason = answers[i][best]
                if not passes_gates(text, finish_reason):
                    self.parse_log.note("verdict", "failed quality gates")
                    continue
                verdicts[i] = (best, int(name != self.target.name), False)
                if name in self.peer_wins and name != leader.name:
                    self.peer_wins[name] += 1
        return verdicts

    def _verify(
        self, verifier: VerifierSettings, reference: str, answer_set: list[tuple[str, str, str]]
    ) -> tuple[int | None, int, bool]:
        correct = [
            verify_answer(verifier.kind, text, reference, verifier.tolerance, verifier.timeout_s, verifier.memory_mb)
            for _, text, _ in answer_set
        ]
        target_correct = correct[0]
        # Prefer a correct source answer as the training target; the target's own only if it alone is right.
        best = next((i for i in range(1, len(correct)) if correct[i]), 0 if target_correct else None)
        return best, int(not target_correct), True
