"""GPU leases between pytest-xdist workers (and concurrent runs): one file lock per UUID.

Docker, Podman, QEMU and the bare host have no GPU allocator of their own, so the harness picks
free GPUs itself. Acquisition is all-or-nothing (take N free locks without waiting, or give back
what was taken and retry), so two workers each holding part of what the other needs cannot
deadlock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from drivers.base import Deadline, DeadlineExceeded, RequestRejected
from drivers.inventory import GpuRecord


@dataclass
class Lease:
    """GPUs held by one sandbox; release is idempotent."""

    gpus: tuple[GpuRecord, ...]
    _locks: list[FileLock] = field(default_factory=list, repr=False)

    @property
    def uuids(self) -> frozenset[str]:
        return frozenset(g.uuid for g in self.gpus)

    def release(self) -> None:
        while self._locks:
            self._locks.pop().release()


class GpuLeases:
    """File locks keyed by GPU UUID under ``lock_dir`` (shared by every worker of a run)."""

    def __init__(self, lock_dir: Path, poll_s: float = 0.2) -> None:
        self.lock_dir = Path(lock_dir)
        self.poll_s = poll_s

    def _lock(self, gpu: GpuRecord) -> FileLock:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_dir / f"{gpu.uuid}.lock"))

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
                return Lease(tuple(g for g, _ in taken), [lk for _, lk in taken])
        for _, lock in taken:
            lock.release()
        return None

    def acquire(self, candidates: Sequence[GpuRecord], n: int, deadline: Deadline) -> Lease:
        """Lease ``n`` of ``candidates`` (lowest index first), waiting for them until the deadline.

        Asking for more GPUs than exist is a rejection, not a wait.
        """
        if n > len(candidates):
            raise RequestRejected(
                f"requested {n} GPUs but the host has {len(candidates)}",
                hint="lower the count, or run on a host with more GPUs",
            )
        ordered = sorted(candidates, key=lambda g: g.index)
        while True:
            lease = self._try_take(ordered, n)
            if lease is not None:
                return lease
            if deadline.expired:
                raise DeadlineExceeded(
                    f"could not lease {n} free GPU(s) of {len(ordered)} within {deadline.seconds:.0f}s",
                    hint="other workers hold them; lower -n or raise --lease-timeout",
                )
            time.sleep(self.poll_s)

    def acquire_exact(self, gpus: Sequence[GpuRecord], deadline: Deadline) -> Lease:
        """Lease exactly these GPUs, waiting for all of them together."""
        while True:
            lease = self._try_take(gpus, len(gpus))
            if lease is not None:
                return lease
            if deadline.expired:
                names = ", ".join(g.uuid for g in gpus)
                raise DeadlineExceeded(f"could not lease {names} within {deadline.seconds:.0f}s")
            time.sleep(self.poll_s)
