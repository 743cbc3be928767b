import pytest

from llm_alloy.models.server import serve_in_thread
from tests.explore.scripted_llm import create_scripted_app


@pytest.fixture()
def scripted():
    """(fast explore config with a scripted HTTP source, the server's request counter)."""
    from tests.explore.test_explore_run import fast_config

    scripted_app, seen = create_scripted_app()
    with serve_in_thread(scripted_app) as url:
        yield fast_config(url), seen
