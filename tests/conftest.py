import os
import shutil
import sys
import tempfile

import pytest

# Tests import their helpers (reference_weights) and the package from the checkout.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from test_train_utils import FUSION_EMITTERS_OFF  # noqa: E402

# One persistent XLA compilation cache per test run, shared by the xdist workers and
# the train.py subprocesses they start (test_train_utils.env): the same short run
# compiled once, not once per process; in-process tests use it too. Fresh each run, so a run never depends on
# what an earlier one (or another checkout's) left behind.
XLA_CACHE_ENV = 'SENET_JAX_TEST_XLA_CACHE'

# The fast tier's budget per test (seconds of the call itself); see docs/architecture.md, "Tests".
FAST_TEST_LIMIT_S = float(os.environ.get('SENET_JAX_FAST_TEST_LIMIT_S', 60))


def pytest_configure(config):
    # XLA:CPU's elemental fusion emitters: with the optimizations off (below) they
    # compile se_resnet_mini's gradient in 0.29 s instead of 0.90 s; at the default
    # level they cost about the same. Set before JAX starts its backend, so the xdist
    # workers, the notebook kernels and the train.py subprocesses (test_train_utils.env)
    # all compile alike (docs/architecture.md, "Tests").
    flags = os.environ.get('XLA_FLAGS', '')
    if FUSION_EMITTERS_OFF not in flags:
        os.environ['XLA_FLAGS'] = f'{flags} {FUSION_EMITTERS_OFF}'.strip()
    if XLA_CACHE_ENV not in os.environ:   # the controller (or a plain run): xdist workers inherit it
        os.environ[XLA_CACHE_ENV] = tempfile.mkdtemp(prefix='senet_jax_xla_cache_')
        config._senet_jax_xla_cache = os.environ[XLA_CACHE_ENV]
    import jax
    jax.config.update('jax_compilation_cache_dir', os.environ[XLA_CACHE_ENV])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


_optimizations_off = None   # as last set for this process's tests


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Most tests compile more than they compute: in process they compile with XLA's
    # optimizations off (about a third less compile time), unless marked `optimized`.
    # train.py subprocesses keep the default (docs/architecture.md, "Tests").
    global _optimizations_off
    import jax
    off = item.get_closest_marker('optimized') is None
    if off != _optimizations_off:
        _optimizations_off = off
        jax.config.update('jax_disable_most_optimizations', off)
        # A jitted function keeps the executable it was first compiled to, whatever the
        # level was; the persistent cache keys on the level, so recompiles are cheap.
        jax.clear_caches()


def pytest_unconfigure(config):
    path = getattr(config, '_senet_jax_xla_cache', None)
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(XLA_CACHE_ENV, None)


def _fast_tier(config):
    """True when slow tests are deselected (`-m "not slow"`)."""
    markexpr = config.getoption('markexpr', '') or ''
    return 'not slow' in ' '.join(markexpr.split())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (call.when == 'call' and report.passed and _fast_tier(item.config)
            and call.duration > FAST_TEST_LIMIT_S):
        report.outcome = 'failed'
        report.longrepr = (f'{item.nodeid} took {call.duration:.0f} s, over the fast tier\'s '
                           f'{FAST_TEST_LIMIT_S:.0f} s: make it smaller or mark it '
                           '@pytest.mark.slow (docs/architecture.md, "Tests").')
