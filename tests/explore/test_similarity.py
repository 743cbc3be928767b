from llm_alloy.explore.similarity import EmbeddingSimilarity
from llm_alloy.explore.sprout import tally_proposals


def test_packaged_minilm_drops_near_duplicate_domains():
    similar = EmbeddingSimilarity("minilm-l6", threshold=0.85)
    assert similar("Mathematics", "Math")
    assert not similar("Mathematics", "Biology")
    tally = tally_proposals(["Math", "Maths", "Biology"], {"Mathematics"}, similar)
    assert dict(tally.votes) == {"Biology": 1}
    assert tally.rejected["similar to existing"] == 2
