import json
import os

import pytest

from llm_alloy.explore.tree import KnowledgeTree, TreeFileError


def test_add_child_gives_unk_above_max_depth_and_refuses_deeper():
    tree = KnowledgeTree(max_depth=2)
    main = tree.add_child((), "Science")
    leaf = tree.add_child(("Science",), "Physics")
    assert main.unk is not None and leaf.unk is None
    assert leaf.path == ("Science", "Physics")
    with pytest.raises(ValueError, match="max depth"):
        tree.add_child(("Science", "Physics"), "Optics")
    with pytest.raises(ValueError, match="already exists"):
        tree.add_child((), "Science")
    with pytest.raises(KeyError):
        tree.node(("Art",))


def test_record_updates_every_node_on_the_path_and_trims_windows():
    tree = KnowledgeTree(max_depth=3, window=3)
    path = ("Science", "Physics", "Optics")
    for depth in range(3):
        tree.add_child(path[:depth], path[depth])
    rewards = [1, 0, 1, 1, 0]
    for r in rewards:
        tree.record(path, r, {"question": "q", "answer": "a"})
    for depth in range(1, 4):
        node = tree.node(path[:depth])
        assert (node.alpha, node.beta, node.count) == (4, 3, 5)
        assert node.window == [1, 1, 0]
    assert len(tree.node(path).pool) == 5
    assert tree.node(path[:1]).pool == []
    with pytest.raises(ValueError, match="leaves"):
        tree.record(path[:2], 1, {"question": "q"})


def test_global_tree_keeps_no_window():
    tree = KnowledgeTree.seeded(["A"], max_depth=1, window=None)
    tree.record(("A",), 1)
    assert tree.node(("A",)).window == [] and tree.node(("A",)).alpha == 2


def test_unverified_outcome_stores_record_only():
    tree = KnowledgeTree.seeded(["A"], max_depth=1)
    tree.record(("A",), None, {"answer": "x"})
    node = tree.node(("A",))
    assert node.count == 0 and node.pool == [{"answer": "x"}]


def _sample_tree() -> KnowledgeTree:
    tree = KnowledgeTree.seeded(["Science", "History"], max_depth=2, window=4)
    tree.add_child(("Science",), "Physics")
    tree.record(("Science", "Physics"), 1, {"question": "Why é?", "answer": "Because."})
    tree.close_exploration()
    tree.mark_trained(("Science", "Physics"), 3)
    tree.record(("Science", "Physics"), 0, None)
    tree.root.unk.disable()
    return tree


def test_save_load_round_trip(tmp_path):
    tree = _sample_tree()
    target = tmp_path / "tree.json"
    tree.save(target)
    loaded = KnowledgeTree.load(target)
    assert loaded.to_dict() == tree.to_dict()
    assert loaded.domain_names() == {"Science", "History", "Physics"}
    assert [n.path for n in loaded.leaves()] == [("Science", "Physics")]
    assert os.listdir(tmp_path) == ["tree.json"]


def test_failed_save_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "tree.json"
    _sample_tree().save(target)
    before = target.read_text()
    broken = _sample_tree()
    broken.record(("Science", "Physics"), 1, {"answer": object()})  # not JSON-serialisable
    with pytest.raises(TypeError):
        broken.save(target)
    assert target.read_text() == before
    assert os.listdir(tmp_path) == ["tree.json"]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("not json at all", "corrupt JSON"),
        ("TRUNCATE", "corrupt JSON"),
        ("[1, 2]", "invalid tree"),
        ('{"format": 99}', "invalid tree"),
        ('{"format": 1, "max_depth": 1, "window": 2, "root": {"children": [{"name": "A"}]}}', "invalid tree"),
    ],
)
def test_bad_files_raise_tree_file_error_naming_the_file(tmp_path, content, problem):
    target = tmp_path / "tree.json"
    if content == "TRUNCATE":
        content = json.dumps(_sample_tree().to_dict())[:-15]
    target.write_text(content)
    with pytest.raises(TreeFileError) as info:
        KnowledgeTree.load(target)
    message = str(info.value)
    assert str(target) in message and problem in message and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(TreeFileError, match="file not found") as info:
        KnowledgeTree.load(tmp_path / "absent.json")
    assert str(tmp_path / "absent.json") in str(info.value)
