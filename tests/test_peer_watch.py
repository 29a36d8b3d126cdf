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


def test_a_peer_that_stopped_on_its_own_error_stops_this_one_after_the_grace(monkeypatch):
    client = FakeClient(peer_alive=True)
    client.store[f'{sharding.PeerWatch.PREFIX}/stopped/1'] = 'error: cannot write checkpoint 40'
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    lost, exited = [], threading.Event()
    sharding.PeerWatch(on_lost=lost.append, interval_s=0.01, timeout_s=60, grace_s=0.2,
                       client=client, exit_fn=lambda code: exited.set())
    assert exited.wait(5)
    assert lost == ['process 1 of 2 (it stopped: error: cannot write checkpoint 40); '
                    'stopping this one too: rerun every process with the same command '
                    'to resume from the newest checkpoint']
    # It says so in turn, for the process that waits on it.
    assert client.store[f'{sharding.PeerWatch.PREFIX}/stopped/0'] == f'error: {lost[0]}'


def test_within_the_grace_its_own_error_comes_first(monkeypatch):
    client = FakeClient(peer_alive=True)
    client.store[f'{sharding.PeerWatch.PREFIX}/stopped/1'] = 'error: bad config'
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    monkeypatch.setattr(jax, 'process_index', lambda: 0)
    lost, exited = [], threading.Event()
    watch = sharding.PeerWatch(on_lost=lost.append, interval_s=0.01, timeout_s=60,
                               grace_s=30, client=client, exit_fn=lambda code: exited.set())
    watch.stopped('error: bad config')   # process 0: process 1 has stopped already
    assert not exited.wait(0.3) and lost == []
    assert client.store[f'{sharding.PeerWatch.PREFIX}/stopped/0'] == 'error: bad config'


def test_process_0_waits_for_the_others_to_read_its_line(monkeypatch):
    """Process 0 hosts the key-value store: it leaves only when the others have
    stopped (or after a beat and the grace), and then only after `exit_linger_s`,
    in which their exits land (a process that outlives the service aborts)."""
    import time
    client = FakeClient(peer_alive=True)
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    monkeypatch.setattr(jax, 'process_index', lambda: 0)
    watch = sharding.PeerWatch(on_lost=pytest.fail, interval_s=0.01, timeout_s=60,
                               grace_s=30, client=client, exit_fn=pytest.fail,
                               exit_linger_s=0.6)
    posted = []

    def other_stops():
        posted.append(time.monotonic())
        client.store[f'{sharding.PeerWatch.PREFIX}/stopped/1'] = 'error: ...'

    start = time.monotonic()
    later = threading.Timer(0.5, other_stops)
    later.start()
    watch.stopped('error: cannot write checkpoint 40')
    returned = time.monotonic()
    # It returns only after the other's line, and then only after the linger
    # (time.sleep never wakes early). Timed from when the line was posted, which
    # the linger follows; the Timer's 0.5 s only decides when that is.
    assert posted and returned - posted[0] >= watch.exit_linger_s
    assert returned - start < 5


def test_after_a_failed_collective_a_shorter_silence_names_the_peer(monkeypatch):
    """settle(): three beats of silence, not the full timeout."""
    import time
    watch, lost, exited = _watch(monkeypatch, FakeClient(peer_alive=False), timeout_s=30)
    start = time.monotonic()
    watch.settle()
    assert exited.is_set() and time.monotonic() - start < 5
    assert lost[0].startswith('lost process 1 of 2 (no sign of life for 0 s)')
