import math

import pytest

from llm_alloy.models.local import LocalBackend, plain_prompt
from llm_alloy.models.types import GenerationParams

CHATS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Write a haiku about the sea, please, in English."}],
]


def test_batched_generation_matches_one_by_one(tiny_backend):
    params = GenerationParams(max_new_tokens=12)
    batched = tiny_backend.generate(CHATS, params)
    single = [tiny_backend.generate([chat], params)[0] for chat in CHATS]
    assert [c.text for c in batched] == [c.text for c in single]
    for completion in batched:
        assert completion.finish_reason in ("stop", "length")
        assert completion.usage.prompt_tokens > 5
        assert 0 < completion.usage.completion_tokens <= 12


def test_top_logprobs_are_the_greedy_choice(tiny_backend):
    completion = tiny_backend.generate([CHATS[0]], GenerationParams(max_new_tokens=6, top_logprobs=4))[0]
    assert completion.logprobs is not None and len(completion.logprobs) == 6
    for token in completion.logprobs:
        values = [lp for _, lp in token.top]
        assert len(values) == 4 and values == sorted(values, reverse=True)
        assert token.token_id == token.top_ids[0]  # greedy decoding picks the top token
        assert math.isclose(token.logprob, values[0])
        assert token.logprob <= 0


def test_sampling_depends_on_seed_and_sample_index(tiny_backend):
    params = GenerationParams(max_new_tokens=16, temperature=1.5, seed=7)
    first = tiny_backend.generate([CHATS[2]], params, sample_index=0)[0].text
    again = tiny_backend.generate([CHATS[2]], params, sample_index=0)[0].text
    other = tiny_backend.generate([CHATS[2]], params, sample_index=1)[0].text
    assert first == again
    assert first != other


def test_plain_prompt_without_chat_template(tiny_backend):
    assert not tiny_backend.tokenizer.chat_template
    assert tiny_backend.render(CHATS[1]) == "System: Be brief.\n\nUser: Name a colour.\n\nAssistant:"
    assert plain_prompt(CHATS[0]).endswith("Assistant:")


def test_score_sums_continuation_tokens(tiny_backend):
    scored = tiny_backend.score(["The capital of France is"], [" Paris, of course."], top_logprobs=3)[0]
    assert len(scored.tokens) >= 3
    assert all(t.logprob <= 0 and len(t.top) == 3 for t in scored.tokens)
    full = tiny_backend.score_text(["The capital of France is Paris, of course."])[0]
    # The continuation is the tail of the full text's scored tokens.
    assert [t.logprob for t in full.tokens[-len(scored.tokens):]] == pytest.approx([t.logprob for t in scored.tokens])


def test_stop_strings_cut_the_text(tiny_backend):
    free = tiny_backend.generate([CHATS[0]], GenerationParams(max_new_tokens=20))[0].text
    stop = free.strip().split()[1] if len(free.strip().split()) > 1 else free.strip()[:2]
    cut = tiny_backend.generate([CHATS[0]], GenerationParams(max_new_tokens=20, stop=(stop,)))[0]
    assert stop not in cut.text
    assert cut.finish_reason == "stop"
    assert free.startswith(cut.text)


@pytest.mark.slow
def test_smollm_answers_sensibly(smollm_backend):
    completions = smollm_backend.generate(
        [[{"role": "user", "content": "What is the capital of France? Answer in one word."}]] * 2,
        GenerationParams(max_new_tokens=16),
    )
    assert "Paris" in completions[0].text
    assert completions[0].finish_reason == "stop"
    assert completions[0].text == completions[1].text


def test_unknown_local_path_is_an_error():
    with pytest.raises(OSError):
        LocalBackend("nope", "/nonexistent/model/folder").load()
