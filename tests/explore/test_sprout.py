import numpy as np
import pytest

from llm_alloy.explore.sprout import choose_sprout, normalize_domain, tally_proposals


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Marine Biology", "Marine Biology"),
        ('  "marine biology".  ', "Marine Biology"),
        ("**Quantum Computing**", "Quantum Computing"),
        ("'organic CHEMISTRY'\n", "Organic Chemistry"),
        ("*History*.", "History"),
        ("“Music Theory”", "Music Theory"),
        ("Art & Design", None),
        ("U.S. History", None),
        ("Deep-Sea Ecology", None),
        ("Machine Learning 101", None),
        ("Economics, Finance", None),
        ("A Very Long Domain Name", None),
        ("Unknown", None),
        ("unk", None),
        ("N/A", None),
        ("None.", None),
        ("**New Domain**", None),
        ("", None),
        ("  ** ", None),
    ],
)
def test_normalize_domain(raw, expected):
    assert normalize_domain(raw) == expected


def test_tally_reports_why_proposals_were_dropped():
    tally = tally_proposals(
        ["Optics", "optics.", "Physics", "Acoustics", "Opticks", "???", "Unknown", "Acoustics"],
        existing={"Physics", "Optics Lab"},
        is_similar=lambda a, b: a[:4] == b[:4],
    )
    assert tally.votes == {"Acoustics": 2}
    assert tally.rejected == {"similar to existing": 3, "existing": 1, "not letters only": 1, "placeholder": 1}


def test_existing_names_are_dropped_case_insensitively():
    rng = np.random.default_rng(0)
    assert choose_sprout(["ALGEBRA", "algebra"], {"Algebra"}, rng) is None
    assert choose_sprout(["Algebra", "Topology"], {"algebra"}, rng) == "Topology"


def test_majority_vote_wins():
    proposals = ["Topology", "Number Theory", "number theory", "**Number Theory**", "Topology"]
    assert choose_sprout(proposals, set(), np.random.default_rng(0)) == "Number Theory"


def test_ties_are_broken_at_random_but_reproducibly():
    proposals = ["Topology", "Geometry"]
    picks = [choose_sprout(proposals, set(), np.random.default_rng(seed)) for seed in range(40)]
    assert set(picks) == {"Topology", "Geometry"}
    assert picks == [choose_sprout(proposals, set(), np.random.default_rng(seed)) for seed in range(40)]
