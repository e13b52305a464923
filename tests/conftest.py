"""Shared pytest set-up: markers, quiet TensorFlow, one CPU device by default."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (still run in CI unless -m 'not slow')")


import gin  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Gin bindings are process-global: a test that parses a gin file must not
    change how the next test's TransformerConfig(...) is built."""
    gin.clear_config()
    yield
    gin.clear_config()
