from collections import Counter

import numpy as np
import pytest

from llm_alloy.explore.allocators import ALLOCATORS, draw_training_mix, make_allocator, sample_path
from llm_alloy.explore.tree import DISABLED_BETA, KnowledgeTree, LoopStat

LONG = "an answer comfortably longer than thirty characters"


def _namer():
    counter = iter(range(1000))

    def sprout(parent_path, level):
        return f"Level{level} Topic{next(counter)}"

    return sprout


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_sprouting_grows_an_empty_tree_to_full_depth(name):
    params = {"proportions": {"Anything": 1.0}} if name == "fixed" else {}
    tree = KnowledgeTree(max_depth=3)
    calls = []
    sprout = _namer()

    def recording_sprout(parent_path, level):
        calls.append((parent_path, level))
        return sprout(parent_path, level)

    path = sample_path(tree, make_allocator(name, **params), np.random.default_rng(0), recording_sprout)
    assert len(path) == 3
    assert calls[:3] == [((), 1), (path[:1], 2), (path[:2], 3)]
    assert tree.root.unk.alpha == 2 and tree.node(path[:1]).unk.alpha == 2
    assert tree.node(path).unk is None


def test_ten_failed_sprouts_disable_the_arm_and_abandon_the_path():
    tree = KnowledgeTree(max_depth=3)
    calls = []
    result = sample_path(tree, make_allocator("dynabranches"), np.random.default_rng(0), lambda p, lvl: calls.append(p))
    assert result is None and len(calls) == 10
    assert tree.root.unk.disabled and tree.root.unk.beta == DISABLED_BETA and tree.root.unk.failures == 10
    # A disabled arm is never offered again: with no domain yet, nothing can be sampled.
    assert sample_path(tree, make_allocator("dynabranches"), np.random.default_rng(1), _namer()) is None


def test_without_sprout_unk_is_never_chosen():
    tree = KnowledgeTree.seeded(["Math", "Law"], max_depth=1)
    tree.root.unk.alpha = 1e6  # would always win a Thompson draw if it were offered
    rng = np.random.default_rng(0)
    assert {sample_path(tree, make_allocator("dynabranches"), rng) for _ in range(50)} == {("Math",), ("Law",)}
    assert sample_path(KnowledgeTree(max_depth=1), make_allocator("uniform"), rng) is None


def test_dynabranches_opens_domains_where_existing_ones_look_strong():
    def grown(alpha, beta):
        tree = KnowledgeTree.seeded(["Math"], max_depth=1)
        tree.node(("Math",)).alpha, tree.node(("Math",)).beta = alpha, beta
        rng = np.random.default_rng(0)
        paths = [sample_path(tree, make_allocator("dynabranches"), rng, _namer()) for _ in range(50)]
        return sum(p == ("Math",) for p in paths), len(tree.root.children) - 1

    math_when_strong, opened_when_strong = grown(1, 50)  # the target rarely loses in Math
    math_when_weak, opened_when_weak = grown(50, 1)
    assert opened_when_strong >= 2 and opened_when_weak <= 1  # unk's Beta(1, 1) beats Beta(50, 1) ~2% of draws
    assert math_when_strong < 10 and math_when_weak >= 45


def _tree_with_pools() -> KnowledgeTree:
    tree = KnowledgeTree(max_depth=2)
    for main, subs in {"Science": ["Physics", "Biology"], "Arts": ["Music"], "Empty": []}.items():
        tree.add_child((), main)
        for sub in subs:
            tree.add_child((main,), sub)
    tree.record(("Science", "Physics"), 1, {"question": "q1", "answer": LONG})
    tree.record(("Science", "Biology"), 1, {"question": "q2", "answer": "too short"})
    tree.record(("Arts", "Music"), 0, {"question": "q3", "answer": LONG})
    tree.root.unk.alpha = tree.node(("Science",)).unk.alpha = 1e6  # unk must be excluded however strong
    return tree


@pytest.mark.parametrize("name", ["uniform", "loss_rate", "dynabranches", "learning_progress", "balance"])
def test_training_mix_skips_unk_empty_nodes_and_short_answers(name):
    tree = _tree_with_pools()
    mix = draw_training_mix(tree, make_allocator(name), np.random.default_rng(0), 200)
    assert len(mix) == 200
    assert {r["question"] for r in mix} <= {"q1", "q3"}
    assert tree.node(("Science",)).trained + tree.node(("Arts",)).trained == 200
    assert tree.node(("Science", "Physics")).trained == tree.node(("Science",)).trained
    assert tree.node(("Empty",)).trained == 0


def test_training_mix_of_an_empty_tree_is_empty():
    assert draw_training_mix(KnowledgeTree.seeded(["A"]), make_allocator("uniform"), np.random.default_rng(0), 5) == []


def test_registry_errors_name_the_options():
    with pytest.raises(ValueError, match="known: .*dynabranches.*uniform"):
        make_allocator("thompson")
    with pytest.raises(ValueError, match="accepts: .*floor"):
        make_allocator("learning_progress", flor=0.2)
    with pytest.raises(ValueError):
        make_allocator("fixed", proportions={"A": -1.0})


def test_fixed_follows_its_proportions():
    tree = KnowledgeTree.seeded(["Math", "Law"], max_depth=1)
    rng = np.random.default_rng(0)
    allocator = make_allocator("fixed", proportions={"Math": 0.8, "Law": 0.2})
    counts = Counter(sample_path(tree, allocator, rng)[0] for _ in range(2000))
    assert counts["Math"] / 2000 == pytest.approx(0.8, abs=0.03)


def test_learning_progress_feeds_the_improving_domain_not_the_stalled_one():
    tree = KnowledgeTree.seeded(["Improving", "Stalled"], max_depth=1)
    for loop in range(8):
        tree.node(("Improving",)).history.append(LoopStat(100 * loop, 100, 80 - 8 * loop))
        tree.node(("Stalled",)).history.append(LoopStat(100 * loop, 100, 70))
    rng = np.random.default_rng(0)
    counts = Counter(sample_path(tree, make_allocator("learning_progress", floor=0.1), rng)[0] for _ in range(1000))
    assert counts["Improving"] > 850 and counts["Stalled"] > 20  # the floor still re-measures it


def test_balance_follows_recent_error_not_old_history():
    tree = KnowledgeTree.seeded(["CaughtUp", "Weak"], max_depth=1)
    # CaughtUp was wrong on everything long ago but is now right; Weak is steadily wrong half the time.
    tree.node(("CaughtUp",)).history = [LoopStat(0, 100, 100)] * 10 + [LoopStat(0, 100, 10)] * 4
    tree.node(("Weak",)).history = [LoopStat(0, 100, 50)] * 14
    rng = np.random.default_rng(0)
    counts = Counter(sample_path(tree, make_allocator("balance"), rng)[0] for _ in range(500))
    assert counts["Weak"] > 450
    plain = Counter(sample_path(tree, make_allocator("balance", discount=1.0), rng)[0] for _ in range(500))
    assert plain["CaughtUp"] > 450  # without discounting the stale history still dominates


def test_learning_progress_discount_weights_recent_loops():
    from llm_alloy.explore.allocators import _loss_trend

    # The loss fell fast early (old loops) and has stopped falling (recent loops).
    stats = tuple(LoopStat(100 * i, 100, 80 - 10 * i) for i in range(4)) + tuple(LoopStat(100 * i, 100, 40) for i in range(4, 12))
    full, _ = _loss_trend(stats)
    recent, _ = _loss_trend(stats, 0.5)
    assert full < recent < 0 and abs(recent) < 0.5 * abs(full)
    assert _loss_trend(stats, 1.0) == _loss_trend(stats)
    # Loops without outcomes are skipped without shifting the others' ages.
    gapped = stats[:-1] + (LoopStat(1100, 0, 0), stats[-1])
    assert _loss_trend(gapped, 0.5)[0] == pytest.approx(_loss_trend(stats, 0.5)[0], rel=0.2)
    with pytest.raises(ValueError, match="discount"):
        make_allocator("learning_progress", discount=0.0)
