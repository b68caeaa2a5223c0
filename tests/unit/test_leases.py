"""GPU leases: all-or-nothing acquisition, rejection beyond the host, release, cross-process locks."""

from __future__ import annotations

import multiprocessing
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuconform.drivers.base import Deadline, DeadlineExceeded, RequestRejected
from gpuconform.drivers.inventory import GpuRecord
from gpuconform.drivers.leases import GpuLeases, waited_s

POLL = 0.02


def _gpus(n: int = 4) -> tuple[GpuRecord, ...]:
    return tuple(
        GpuRecord(i, f"GPU-lease-{i}", "sim", f"0000:{0x18 + i:02x}:00.0", 1024, "1.0", i) for i in range(n)
    )


@pytest.fixture
def gpus() -> tuple[GpuRecord, ...]:
    return _gpus()


def _free(lock_dir: Path, gpu: GpuRecord) -> bool:
    """Whether ``gpu`` can be leased right now by a fresh, independent lease table."""
    try:
        lease = GpuLeases(lock_dir, poll_s=POLL).acquire_exact([gpu], Deadline(0))
    except DeadlineExceeded:
        return False
    lease.release()
    return True


def test_acquire_takes_the_lowest_free_indices(tmp_path: Path, gpus: tuple[GpuRecord, ...]) -> None:
    lease = GpuLeases(tmp_path).acquire(list(reversed(gpus)), 2, Deadline(1))
    try:
        assert [g.index for g in lease.gpus] == [0, 1]
        assert lease.uuids == {"GPU-lease-0", "GPU-lease-1"}
    finally:
        lease.release()


def test_acquire_skips_held_gpus(tmp_path: Path, gpus: tuple[GpuRecord, ...]) -> None:
    held = GpuLeases(tmp_path).acquire_exact([gpus[0], gpus[2]], Deadline(1))
    try:
        lease = GpuLeases(tmp_path).acquire(gpus, 2, Deadline(1))
        assert [g.index for g in lease.gpus] == [1, 3]
        lease.release()
    finally:
        held.release()


def test_acquisition_is_all_or_nothing(tmp_path: Path, gpus: tuple[GpuRecord, ...]) -> None:
    holder = GpuLeases(tmp_path, poll_s=POLL).acquire(gpus, 3, Deadline(1))
    try:
        assert [g.index for g in holder.gpus] == [0, 1, 2]
        other = GpuLeases(tmp_path, poll_s=POLL)
        # One attempt (an expired deadline): it takes GPU 3, misses a second, must give 3 back.
        with pytest.raises(DeadlineExceeded):
            other.acquire(gpus, 2, Deadline(0))
        assert _free(tmp_path, gpus[3])
        # Retrying until the deadline ends the same way, after waiting for it.
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            other.acquire(gpus, 2, Deadline(0.3))
        assert time.monotonic() - start >= 0.3
        assert str(info.value).startswith("could not lease 2 free GPU(s) of 4 within ")
        assert "hint: other workers hold them" in str(info.value)
        assert _free(tmp_path, gpus[3])
        for gpu in gpus[:3]:
            assert not _free(tmp_path, gpu)
    finally:
        holder.release()


def test_acquire_more_than_exist_is_rejected_at_once(tmp_path: Path, gpus: tuple[GpuRecord, ...]) -> None:
    start = time.monotonic()
    with pytest.raises(RequestRejected) as info:
        GpuLeases(tmp_path).acquire(gpus, 5, Deadline(30))
    assert time.monotonic() - start < 1
    assert str(info.value) == (
        "requested 5 GPUs but the host has 4 (hint: lower the count, or run on a host with more GPUs)"
    )
    assert all(_free(tmp_path, g) for g in gpus)


def test_acquire_zero_is_an_empty_lease(tmp_path: Path, gpus: tuple[GpuRecord, ...]) -> None:
    lease = GpuLeases(tmp_path).acquire(gpus, 0, Deadline(1))
    assert lease.gpus == ()
    assert all(_free(tmp_path, g) for g in gpus)


def test_release_frees_and_is_idempotent(tmp_path: Path, gpus: tuple[GpuRecord, ...]) -> None:
    lease = GpuLeases(tmp_path).acquire(gpus, 4, Deadline(1))
    assert not any(_free(tmp_path, g) for g in gpus)
    lease.release()
    lease.release()
    assert all(_free(tmp_path, g) for g in gpus)


def test_acquire_exact_waits_for_a_release_from_another_thread(
    tmp_path: Path, gpus: tuple[GpuRecord, ...]
) -> None:
    held = GpuLeases(tmp_path).acquire_exact([gpus[1]], Deadline(1))
    releaser = threading.Timer(0.3, held.release)
    releaser.start()
    try:
        start = time.monotonic()
        lease = GpuLeases(tmp_path, poll_s=POLL).acquire_exact([gpus[0], gpus[1]], Deadline(5))
        waited = time.monotonic() - start
    finally:
        releaser.join()
        held.release()
    assert lease.uuids == {"GPU-lease-0", "GPU-lease-1"}
    assert 0.25 <= waited < 4
    lease.release()


def test_acquire_exact_times_out_naming_the_gpus(tmp_path: Path, gpus: tuple[GpuRecord, ...]) -> None:
    held = GpuLeases(tmp_path).acquire_exact([gpus[2]], Deadline(1))
    try:
        with pytest.raises(DeadlineExceeded) as info:
            GpuLeases(tmp_path, poll_s=POLL).acquire_exact([gpus[1], gpus[2]], Deadline(0.1))
        assert str(info.value).startswith("could not lease GPU-lease-1, GPU-lease-2 within ")
        assert _free(tmp_path, gpus[1])  # the part it could take was given back
    finally:
        held.release()


_HOLDER = """
import sys, time
from pathlib import Path
from gpuconform.drivers.base import Deadline
from gpuconform.drivers.inventory import GpuRecord
from gpuconform.drivers.leases import GpuLeases, waited_s
gpu = GpuRecord(0, "GPU-lease-0", "sim", "0000:18:00.0", 1024, "1.0", 0)
lease = GpuLeases(Path(sys.argv[1])).acquire_exact([gpu], Deadline(5))
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder_process(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding GPU 0's lease until it is killed."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=20)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == "held", f"lease holder did not start (exit {proc.poll()})"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_lease_held_by_another_process_blocks_until_it_dies(
    tmp_path: Path, holder_process: subprocess.Popen[str]
) -> None:
    gpus = _gpus(1)
    leases = GpuLeases(tmp_path, poll_s=POLL)
    with pytest.raises(DeadlineExceeded):
        leases.acquire(gpus, 1, Deadline(0.2))
    holder_process.kill()  # no release: the kernel drops the flock with the process
    holder_process.wait(timeout=10)
    lease = leases.acquire(gpus, 1, Deadline(5))
    assert lease.uuids == {"GPU-lease-0"}
    lease.release()


def _narrow_repeater(lock_dir: str, gpus: list[GpuRecord], until: float) -> None:
    """Another worker: lease one GPU, hold it briefly, give it back, at once ask again."""
    leases = GpuLeases(Path(lock_dir), poll_s=0.01)
    while time.time() < until:
        lease = leases.acquire(gpus, 1, Deadline(30))
        time.sleep(0.15)
        lease.release()


def test_a_wide_request_is_not_starved_by_narrow_ones_that_keep_coming(tmp_path: Path) -> None:
    gpus = list(_gpus(2))
    until = time.time() + 6.0
    others = [
        multiprocessing.get_context("fork").Process(
            target=_narrow_repeater, args=(str(tmp_path), gpus, until)
        )
        for _ in range(2)
    ]
    for proc in others:
        proc.start()
    try:
        time.sleep(0.5)  # both GPUs are now taken in turns by the two repeaters
        leases = GpuLeases(tmp_path, poll_s=0.05)
        before = waited_s()
        started = time.monotonic()
        lease = leases.acquire(gpus, 2, Deadline(20))
        waited = time.monotonic() - started
        lease.release()
        assert waited_s() - before == pytest.approx(waited, abs=0.05)
        # Without the turnstile the repeaters hand the GPUs to each other until they stop (6 s).
        assert waited < 2.0, f"the wide request waited {waited:.1f}s behind narrow ones"
    finally:
        for proc in others:
            proc.join(timeout=15)
