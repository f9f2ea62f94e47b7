"""CI runs every hypothesis property test derandomized (tests/conftest.py's "ci" profile, CI=true)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings

TESTS = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not os.environ.get("CI"), reason="the profile loads when CI is set")
def test_under_ci_every_settings_object_is_derandomized():
    assert settings.get_current_profile_name() == "la_edge_ci"
    assert settings.default.derandomize is True and settings.default.deadline is None
    # a test's own @settings, as this suite writes them, inherits both
    own = settings(max_examples=3, database=None, print_blob=True, suppress_health_check=list(HealthCheck))
    assert own.derandomize is True and own.deadline is None


def test_ci_true_loads_the_profile():
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                        "under_ci"], capture_output=True, text=True, timeout=300, cwd=TESTS.parent,
                       env={**os.environ, "CI": "true"})
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr


def test_no_test_opts_out_of_the_ci_profile():
    for path in TESTS.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"derandomize\s*=\s*False|@seed\(|\bload_profile\(", text) or path.name in (
            "conftest.py", "test_hypothesis_profile.py"), path
