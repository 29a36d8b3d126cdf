"""Data parallelism over every device of every process, via jit + NamedSharding.

A 1-D mesh with a 'data' axis spans all devices (`jax.devices()` is global in
multi-process runs). Batches are split along 'data'; parameters and optimizer
state are replicated. A plain `jax.jit` over a batch sharded this way computes
BatchNorm statistics and gradients over the *global* batch: XLA inserts the
all-reduces, no pmap/psum needed.
"""

import os
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh(devices=None) -> Mesh:
    """A 'data' mesh over `devices` (default: every device, ordered by process).

    Each process feeds the rows of the global batch that its own devices hold
    (`shard_batch`), and the input pipelines give process p the p-th slice: so
    every process's devices must be one contiguous block of the axis, in
    process order. The default order is; a given order that is not is refused.
    """
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    problem = process_order_problem(devices)
    if problem:
        raise ValueError(problem)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def process_order_problem(devices) -> str | None:
    """Why `devices` cannot be the 'data' axis (see create_mesh), or None."""
    order = [d.process_index for d in devices]
    blocks = [p for i, p in enumerate(order) if i == 0 or order[i - 1] != p]
    if blocks == sorted(set(order)):
        return None
    split = next((p for p in blocks if blocks.count(p) > 1), None)
    where = (f"process {split}'s devices are split into {blocks.count(split)} blocks"
             if split is not None else 'the processes are out of order')
    return (f'the data axis needs each process\'s devices in one contiguous block, '
            f'in process order, but {where}; order the devices by '
            '(process_index, id), as create_mesh() does by default')


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over 'data', the rest whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_size_problem(global_batch_size: int, mesh: Mesh) -> str | None:
    """Why `global_batch_size` cannot be split over the mesh, or None if it can."""
    n = mesh.devices.size
    if global_batch_size <= 0:
        return f'batch_size must be positive, got {global_batch_size}'
    if global_batch_size % n:
        return (f'batch_size {global_batch_size} is not divisible by the {n} '
                f'devices; use a multiple of {n}')
    return None


def local_batch_size(global_batch_size: int) -> int:
    """The rows of each global batch that this process feeds."""
    return global_batch_size // jax.process_count()


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Host-local numpy batch (this process's rows) -> global jax.Arrays."""
    return _global_arrays(batch, data_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host values identical on every process -> replicated global jax.Arrays."""
    return _global_arrays(tree, replicated(mesh))


def _global_arrays(tree: Any, sharding: NamedSharding) -> Any:
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def all_processes(value: int) -> list[int]:
    """`value` of every process, in process order (a collective: every process
    must call it). One process: [value]."""
    if jax.process_count() == 1:
        return [int(value)]
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    gathered = multihost_utils.process_allgather(np.int32(value))
    return [int(v) for v in np.asarray(gathered).reshape(-1)]


class PeerWatch:
    """Stops this process, in one line, when another process of the run is lost.

    jax.distributed notices a dead process only at its heartbeat timeout and
    then aborts with a crash dump, while the survivors may sit in a collective
    that never completes. Here every process posts a counter to the
    coordination service's key-value store every `interval_s` seconds and reads
    the others'; a counter that has not moved for `timeout_s`, or a
    coordination service that has not answered for `timeout_s` (one failed
    call is retried at the next beat: a transient RPC error is no loss), names
    the lost process, `on_lost(message)` is called and the process exits with
    status 1. A process that ends normally says so first (`done()`), so its
    silence afterwards is not a loss. A process that stops on its own error
    (a failed checkpoint write, say) posts its line (`stopped(line)`): the
    others, which would otherwise wait for it at the next collective or at
    Orbax's save barrier, stop within a beat plus `grace_s` naming it. The
    grace lets a process that meets the same error itself (every process does
    for most config errors) print its own line instead.

    The key-value store is reached through jax's private
    `jax._src.distributed.global_state.client` (tested with the jax versions
    pyproject.toml allows). Where it is missing, a warning is logged and
    jax.distributed's own heartbeat timeout is left to act.
    """

    PREFIX = 'senet_jax/peer_watch'

    def __init__(self, on_lost, interval_s: float = 5.0, timeout_s: float = 60.0,
                 client=None, exit_fn=os._exit, grace_s: float = 10.0,  # pylint: disable=protected-access
                 exit_linger_s: float = 1.0):
        self.client = client if client is not None else _coordination_client()
        self.on_lost, self.interval_s, self.timeout_s = on_lost, interval_s, timeout_s
        self.grace_s, self.exit_linger_s = grace_s, exit_linger_s
        self.exit_fn = exit_fn
        self.me, self.count = jax.process_index(), jax.process_count()
        self._stop = threading.Event()
        self._suspect = threading.Event()   # a collective failed (settle)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='peer_watch')
        if self.client is None:
            logging.warning('PeerWatch: jax.distributed exposes no key-value client '
                            'here (jax %s); a lost process is left to '
                            "jax.distributed's own heartbeat timeout", jax.__version__)
            return
        self._thread.start()

    def done(self):
        self._post('done', '1')

    def stopped(self, line: str):
        """This process stops on its own error, `line`: tell the others.
        Process 0 hosts the coordination service, so it waits (at most a beat
        and the grace) until every other process has read it and stopped or
        ended."""
        self._post('stopped', line)
        if self.client is None or self.me != 0:
            return
        deadline = time.monotonic() + self.interval_s + self.grace_s + 5
        others = {p for p in range(self.count) if p != self.me}
        while time.monotonic() < deadline:
            try:
                keys = {k.rsplit(self.PREFIX + '/', 1)[-1]
                        for k, _ in self.client.key_value_dir_get(self.PREFIX)}
            except Exception:  # pylint: disable=broad-except
                return
            if all(f'stopped/{p}' in keys or f'done/{p}' in keys for p in others):
                # Each posts its line just before it exits. Should process 0 (and
                # the service) go first, a process still alive aborts with a crash
                # dump ('Terminating process because the JAX distributed service
                # detected fatal errors'): let their exits land.
                time.sleep(self.exit_linger_s)
                return
            time.sleep(min(0.5, self.interval_s))

    def _post(self, kind, value):
        self._stop.set()
        if self.client is None:
            return
        try:
            self.client.key_value_set(f'{self.PREFIX}/{kind}/{self.me}', value,
                                      allow_overwrite=True)
        except Exception:  # pylint: disable=broad-except
            pass

    def settle(self):
        """After a failed collective: waits until a lost process would have
        been named (and this one stopped); returns if every process is alive.
        A failed collective is evidence already, so silence of three beats
        (not `timeout_s`) now names a process lost."""
        self._suspect.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout_s + 2 * self.interval_s)

    def _timeout(self):
        return (min(self.timeout_s, 3 * self.interval_s) if self._suspect.is_set()
                else self.timeout_s)

    def _beat(self, beat: int) -> dict:
        self.client.key_value_set(f'{self.PREFIX}/alive/{self.me}', str(beat),
                                  allow_overwrite=True)
        return {k.rsplit(self.PREFIX + '/', 1)[-1]: v for k, v in
                self.client.key_value_dir_get(self.PREFIX)}

    def _run(self):
        seen = {p: (None, time.monotonic()) for p in range(self.count)
                if p != self.me}
        beat, failing_since, stopped_at = 0, None, {}
        while not self._stop.wait(self.interval_s if beat else 0):
            beat += 1
            try:
                values = self._beat(beat)
                failing_since = None
            except Exception as e:  # pylint: disable=broad-except
                now = time.monotonic()
                failing_since = failing_since or now
                first = str(e).strip().splitlines()[0] if str(e).strip() else ''
                if now - failing_since < self._timeout():
                    logging.warning('PeerWatch: the coordination service did not '
                                    'answer (%s); retrying', first[:120])
                    continue
                return self._lost(0, f'the coordination service on process 0 '
                                  f'stopped answering for {self._timeout():.0f} s '
                                  f'({first[:120]})')
            now = time.monotonic()
            for p, (last, since) in seen.items():
                if f'stopped/{p}' in values:
                    stopped_at.setdefault(p, now)
                    if now - stopped_at[p] >= self.grace_s:
                        return self._lost(p, f'it stopped: {values[f"stopped/{p}"]}',
                                          what='process')
                    continue
                if f'done/{p}' in values:
                    continue
                value = values.get(f'alive/{p}')
                if value != last:
                    seen[p] = (value, now)
                elif now - since > self._timeout():
                    return self._lost(p, f'no sign of life for {self._timeout():.0f} s')

    def _lost(self, process, why, what='lost process'):
        if self._stop.is_set():
            return
        message = (f'{what} {process} of {self.count} ({why}); stopping '
                   'this one too: rerun every process with the same command to '
                   'resume from the newest checkpoint')
        self.on_lost(message)
        self._post('stopped', f'error: {message}')
        self.exit_fn(1)


def _coordination_client():
    """jax.distributed's key-value client (private API), or None if this jax
    has none where we look."""
    try:
        from jax._src import distributed  # pylint: disable=g-import-not-at-top
        return distributed.global_state.client
    except (ImportError, AttributeError):
        return None
