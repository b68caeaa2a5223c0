"""GPU leases between pytest-xdist workers (and concurrent runs): one file lock per UUID.

Docker, Podman, QEMU and the bare host have no GPU allocator of their own, so the harness picks
free GPUs itself. A MIG device has no lock of its own: a request for one takes its parent GPU's
lock (selection.py), so a whole-GPU lease and a MIG lease of the same GPU exclude each other, at
the cost that two MIG devices of one parent are never leased at the same time.

Acquisition is all-or-nothing (take N free locks without waiting, or give back what was taken and
retry), so two workers each holding part of what the other needs cannot deadlock.

Waiting is fair through a turnstile: a process that holds no lease passes one file lock before
it may take GPUs, and keeps it while it waits. A wide request (every GPU) waiting there therefore
stops narrow requests of other workers from slipping in each time a GPU comes free, so it waits
only for the leases already held, not for a stream of new ones. A process that already holds a
lease (a case that needs a second sandbox) goes past the turnstile, so the turnstile's holder
can never wait for a lease its own waiting prevents from being released.

Every wait is added to ``waited_s()``, which the cell reads around a provision to record
``lease_wait_s`` apart from the provisioning time.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from gpuconform.drivers.errors import Deadline, DeadlineExceeded, RequestRejected
from gpuconform.drivers.inventory import GpuRecord

# Per process: leases held per lock directory, and the seconds spent waiting for leases.
_HELD: Counter[str] = Counter()
_WAITED = [0.0]


def waited_s() -> float:
    """Seconds this process has spent waiting for leases so far (read it before and after)."""
    return _WAITED[0]


# Per process: the GPUs a count request takes first, when free (a parallel run's placement).
_PREFERRED: list[frozenset[str]] = [frozenset()]


@contextlib.contextmanager
def preferring(uuids: Iterable[str]) -> Iterator[None]:
    """Count requests made inside take these GPUs first when they are free, then the lowest
    free index as always. A parallel run's scheduler places each unit of cells on GPUs no other
    worker's unit holds (fixtures/schedule.py); this makes its leases land there. Which GPUs a
    count request gets is the harness's choice, never part of what a case judges."""
    previous, _PREFERRED[0] = _PREFERRED[0], frozenset(uuids)
    try:
        yield
    finally:
        _PREFERRED[0] = previous


@dataclass
class Lease:
    """GPUs held by one sandbox; release is idempotent."""

    gpus: tuple[GpuRecord, ...]
    _locks: list[FileLock] = field(default_factory=list, repr=False)
    _key: str = field(default="", repr=False)

    @property
    def uuids(self) -> frozenset[str]:
        return frozenset(g.uuid for g in self.gpus)

    def release(self) -> None:
        if self._locks and self._key:
            _HELD[self._key] -= 1
        while self._locks:
            self._locks.pop().release()


class GpuLeases:
    """File locks keyed by GPU UUID under ``lock_dir`` (shared by every worker of a run)."""

    def __init__(self, lock_dir: Path, poll_s: float = 0.2) -> None:
        self.lock_dir = Path(lock_dir)
        self.poll_s = poll_s

    @property
    def _key(self) -> str:
        return str(self.lock_dir)

    @contextlib.contextmanager
    def _turn(self, deadline: Deadline, what: str) -> Iterator[None]:
        """Hold the turnstile while waiting, unless this process already holds a lease here."""
        if _HELD[self._key] > 0:
            yield
            return
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        gate = FileLock(str(self.lock_dir / "turnstile.lock"))
        try:
            gate.acquire(timeout=max(deadline.remaining, 0.0), poll_interval=self.poll_s)
        except Timeout:
            raise DeadlineExceeded(
                f"could not lease {what} within {deadline.seconds:.0f}s: other workers were queued first",
                hint="other workers hold the GPUs; lower -n or raise --provision-timeout",
            ) from None
        try:
            yield
        finally:
            gate.release()

    def _wait_for(self, take: Callable[[], Lease | None], deadline: Deadline, what: str) -> Lease:
        """Try ``take`` until it succeeds (fair, through the turnstile) or the deadline passes."""
        started = time.monotonic()
        try:
            with self._turn(deadline, what):
                while True:
                    lease = take()
                    if lease is not None:
                        return lease
                    if deadline.expired:
                        raise DeadlineExceeded(
                            f"could not lease {what} within {deadline.seconds:.0f}s",
                            hint="other workers hold them; lower -n or raise --provision-timeout",
                        )
                    time.sleep(self.poll_s)
        finally:
            _WAITED[0] += time.monotonic() - started

    def _lock(self, gpu: GpuRecord) -> FileLock:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        # Not thread-local: a lease is an owned resource that may be released from another thread
        # (a reaper, a timer), and each acquisition has its own FileLock object anyway.
        return FileLock(str(self.lock_dir / f"{gpu.uuid}.lock"), thread_local=False)

    def _try_take(self, gpus: Iterable[GpuRecord], n: int) -> Lease | None:
        if n == 0:
            return Lease(())
        taken: list[tuple[GpuRecord, FileLock]] = []
        for gpu in gpus:
            lock = self._lock(gpu)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            taken.append((gpu, lock))
            if len(taken) == n:
                _HELD[self._key] += 1
                return Lease(tuple(g for g, _ in taken), [lk for _, lk in taken], str(self.lock_dir))
        for _, lock in taken:
            lock.release()
        return None

    def acquire(self, candidates: Sequence[GpuRecord], n: int, deadline: Deadline) -> Lease:
        """Lease ``n`` of ``candidates`` (preferred first, then lowest index), waiting for them
        until the deadline.

        Asking for more GPUs than exist is a rejection, not a wait.
        """
        if n > len(candidates):
            raise RequestRejected(
                f"requested {n} GPUs but the host has {len(candidates)}",
                hint="lower the count, or run on a host with more GPUs",
            )
        preferred = _PREFERRED[0]
        ordered = sorted(candidates, key=lambda g: (g.uuid not in preferred, g.index))
        return self._wait_for(
            lambda: self._try_take(ordered, n), deadline, f"{n} free GPU(s) of {len(ordered)}"
        )

    def acquire_exact(self, gpus: Sequence[GpuRecord], deadline: Deadline) -> Lease:
        """Lease exactly these GPUs, waiting for all of them together."""
        names = ", ".join(g.uuid for g in gpus)
        return self._wait_for(lambda: self._try_take(gpus, len(gpus)), deadline, names)
