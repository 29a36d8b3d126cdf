"""PeerWatch against a fake key-value client: transient RPC errors are retried,
a silent service or peer is named, a missing private entry point falls back."""

import threading

import jax
import pytest

from senet_jax import sharding


class FakeClient:
    """jax.distributed's key-value client; `failing` calls raise first."""

    def __init__(self, failing=0, peer_alive=True):
        self.failing, self.peer_alive, self.calls = failing, peer_alive, 0
        self.store, self.beat = {}, 0

    def key_value_set(self, key, value, allow_overwrite=False):
        self.calls += 1
        if self.failing:
            self.failing -= 1
            raise RuntimeError('UNAVAILABLE: connection reset')
        self.store[key] = value

    def key_value_dir_get(self, prefix):
        if self.peer_alive:  # process 1 beats too
            self.beat += 1
            self.store[f'{prefix}/alive/1'] = str(self.beat)
        return list(self.store.items())


def _watch(monkeypatch, client, timeout_s):
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    lost, exited = [], threading.Event()
    watch = sharding.PeerWatch(on_lost=lost.append, interval_s=0.01,
                               timeout_s=timeout_s, client=client,
                               exit_fn=lambda code: exited.set())
    return watch, lost, exited


def test_one_failed_rpc_is_retried_not_fatal(monkeypatch):
    client = FakeClient(failing=1)
    watch, lost, exited = _watch(monkeypatch, client, timeout_s=5)
    while client.beat < 5:
        assert not exited.wait(0.01)
    watch.done()
    assert lost == [] and not exited.is_set()


def test_a_service_silent_past_the_timeout_is_named(monkeypatch):
    watch, lost, exited = _watch(monkeypatch, FakeClient(failing=10**9),
                                 timeout_s=0.1)
    assert exited.wait(5)
    assert lost[0].startswith('lost process 0 of 2 (the coordination service on '
                              'process 0 stopped answering for 0 s')


def test_a_silent_peer_is_named(monkeypatch):
    watch, lost, exited = _watch(monkeypatch, FakeClient(peer_alive=False),
                                 timeout_s=0.1)
    assert exited.wait(5)
    assert lost[0].startswith('lost process 1 of 2 (no sign of life')


def test_without_the_private_client_it_warns_and_stands_aside(monkeypatch, caplog):
    monkeypatch.setattr(sharding, '_coordination_client', lambda: None)
    watch = sharding.PeerWatch(on_lost=pytest.fail, interval_s=0.01)
    assert "jax.distributed's own heartbeat" in caplog.text
    assert not watch._thread.is_alive()
    watch.done()
    watch.settle()  # returns at once


def test_the_private_entry_point_exists_in_this_jax():
    """pyproject.toml bounds jax to the versions where this holds."""
    from jax._src import distributed
    assert hasattr(distributed.global_state, 'client')
