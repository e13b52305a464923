"""Shared pytest set-up: markers, quiet TensorFlow, one CPU device by default, shared fixtures.

Helpers that are plain functions live in tests/*_fixtures.py (import what you use);
fixtures shared across folders live here.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests' programs are tiny: compiling them is most of the suite's time, running them little. XLA's
# cheapest codegen about halves a compile (docs/architecture.md, "Tests"). An XLA_FLAGS that already
# sets the optimization level (e.g. =3, to test what users run) is kept; subprocesses inherit it.
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}".strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (still run in CI unless -m 'not slow')")


import gin  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Gin bindings are process-global: a test that parses a gin file must not
    change how the next test's TransformerConfig(...) is built."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="session", autouse=True)
def _session_compilation_cache(tmp_path_factory):
    """Tests in many modules compile the same tiny programs (init, train, eval, score): every
    program is cached on disk for the session, so a repeat loads instead of compiling."""
    yield from _compilation_cache_in(tmp_path_factory)


@pytest.fixture(scope="module")
def persistent_compilation_cache(tmp_path_factory):
    """Runs in this module compile the same programs again and again: cache them (again, if a
    test before this module moved the cache elsewhere)."""
    yield from _compilation_cache_in(tmp_path_factory)


def _compilation_cache_in(tmp_path_factory):
    # private API: the cache is set up once per process; reset it to take effect
    from jax._src import compilation_cache
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {n: getattr(jax.config, n) for n in names}
    new = (str(tmp_path_factory.getbasetemp() / "jax_cache"), 0, 0)
    for n, v in zip(names, new):
        jax.config.update(n, v)
    compilation_cache.reset_cache()
    yield
    for n, v in old.items():
        jax.config.update(n, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def prefix_run(tmp_path_factory):
    """A prefix-LM model dir with config.gin and a step-7 checkpoint: (model_dir, model, params)."""
    from tests.checkpoint_fixtures import tiny, write_run
    model_dir = str(tmp_path_factory.mktemp("prefix_run"))
    model, params = write_run(model_dir, tiny("prefix_lm"))
    return model_dir, model, params


@pytest.fixture(autouse=True)
def _default_data_settings():
    """`data.tasks.configure` is process-global too (a gin vocabulary binding re-registers
    every task): each test starts and ends with the defaults (bytes, $TFDS_DATA_DIR)."""
    yield
    tasks = sys.modules.get("t5x_like.data.tasks")
    if tasks is not None:
        tasks.configure()


@pytest.fixture(scope="session")
def real_corpora(tmp_path_factory):
    """Prepared TFDS directories of c4/en, wikitext103 and lm1b and a SentencePiece model on
    their text (tests/corpus_fixtures.RealCorpora), built once per session."""
    from tests.corpus_fixtures import build_real_corpora
    return build_real_corpora(str(tmp_path_factory.mktemp("real_corpora")))
