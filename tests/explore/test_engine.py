"""One exploration step against real backends: a scripted HTTP source and the tiny target."""

import numpy as np
import pytest

from llm_alloy.explore.allocators import make_allocator
from llm_alloy.explore.config import ExploreConfig
from llm_alloy.explore.engine import Explorer
from llm_alloy.explore.prompts import ParseLog
from llm_alloy.explore.tree import KnowledgeTree
from llm_alloy.models.factory import build_backend
from llm_alloy.models.ledger import Ledger
from tests.explore.test_explore_run import fast_config


@pytest.fixture()
def explorer(scripted):
    data, _ = scripted
    config = ExploreConfig.model_validate({**data, "sources": ["scripted"], "leader": "peer"})
    sources = {"scripted": build_backend(config.model("scripted"))}
    return Explorer(config, sources, build_backend(config.model("student")), Ledger(), ParseLog())


def test_a_step_grows_the_tree_and_records_outcomes(explorer):
    tree = KnowledgeTree(max_depth=2, window=4)
    result = explorer.step(tree, make_allocator("dynabranches"), np.random.default_rng(0), loop=0, index=0)
    assert result.leader == "scripted" and result.records
    assert set(tree.root.children) <= {"Mathematics", "Biology", "History"}
    assert sum(n.count for n in tree.root.children.values()) == len(result.records)
    assert explorer.parse_log.counts["domain:tagged"] > 0
    # The scripted judge mostly prefers the scripted answer: the target loses and the source's answer is kept.
    losses = [r for r in result.records if r["reward"] == 1 and not r["verified"]]
    assert losses and all(r["best_model"] == "scripted" and r["answer"].startswith("Scripted answer") for r in losses)
    assert {e.role for e in explorer.ledger.rows()} >= {"sprout", "question", "source-answer", "target-answer", "judge"}


def test_an_error_signal_allocator_learns_only_from_verified_questions(explorer):
    tree = KnowledgeTree.seeded(["Mathematics", "History"], max_depth=2, window=4)
    result = explorer.step(tree, make_allocator("balance"), np.random.default_rng(1), loop=0, index=0)
    verified = [r for r in result.records if r["verified"]]
    judged = [r for r in result.records if not r["verified"]]
    assert verified and judged
    assert tree.node(("Mathematics",)).count == len(verified)
    judged_only = [n for n in tree.root.children.values() if n.name != "Mathematics"]
    # Judged by the leader only: no outcome for an error signal...
    assert judged_only and all(n.count == 0 for n in judged_only)
    pools = [rec for leaf in tree.leaves() if leaf.path[0] != "Mathematics" for rec in leaf.pool]
    assert len(pools) == len(judged)  # ...but the records are still training data


def test_peer_election_follows_the_judges_verdicts(explorer):
    explorer.sources = {"scripted": explorer.sources["scripted"], "other": explorer.sources["scripted"]}
    explorer.peer_wins = {"scripted": 40, "other": 0}
    rng = np.random.default_rng(0)
    leaders = [explorer.draw_leader(rng) for _ in range(200)]
    assert leaders.count("scripted") > 180
    explorer.config = explorer.config.model_copy(update={"leader": "random"})
    leaders = [explorer.draw_leader(rng) for _ in range(200)]
    assert 60 < leaders.count("scripted") < 140
