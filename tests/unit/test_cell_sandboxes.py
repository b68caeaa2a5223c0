"""The sandboxes a suite gets from its Cell beyond ``shared`` and ``own`` (issue 13).

``Cell.extra`` (a third sandbox on a full host) and ``Cell.on_bare_host`` (the bandwidth
reference) replace suites that provisioned through the adapter themselves: they must go through
the same labels and validation as the cell's own sandboxes, be closed by the cell, and add
nothing to what the cell reports as its grant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gpuconform.drivers.base import RequestRejected, Sandbox
from gpuconform.drivers.request import GpuRequest, RequestError
from tests.unit.fakesandbox import FakeAdapter, FakeRuntime, make_cell, world


def _deadlines(adapter: FakeAdapter) -> list[float]:
    """Record the deadline (in seconds) of every provision the adapter is asked for."""
    seen: list[float] = []
    provision: Callable[..., Sandbox] = adapter.provision

    def spy(*args: Any, **kwargs: Any) -> Sandbox:
        seen.append(kwargs["deadline"].seconds)
        return provision(*args, **kwargs)

    adapter.provision = spy  # type: ignore[method-assign]
    return seen


def test_extra_is_labelled_short_lived_closed_with_the_case_and_not_granted() -> None:
    adapter = world("h100x4")
    deadlines = _deadlines(adapter)
    cell = make_cell("exclusive.concurrent", adapter)
    first = cell.own(GpuRequest.default())
    third = cell.extra(GpuRequest.default(), wait_s=2.5)
    assert deadlines[-1] == 2.5 and deadlines[0] != 2.5  # the short wait is the extra one's alone
    assert adapter.provisions[-1]["labels"]["dev.gpuconform.case"] == "exclusive.concurrent"
    assert third.granted and not third.granted & (cell.granted or frozenset())
    assert cell.granted == first.granted  # its GPUs are not the case's grant
    cell.close_own()
    assert [b.closes for b in adapter.provisioned] == [1, 1]  # the cell closed both


def test_extra_refused_raises_to_the_suite_and_leaves_nothing_to_close() -> None:
    adapter = world("single")
    cell = make_cell("exclusive.concurrent", adapter)
    cell.own(GpuRequest.default())
    with pytest.raises(RequestRejected):
        cell.extra(GpuRequest.default(), wait_s=1.0)
    cell.close_own()
    assert [b.closes for b in adapter.provisioned] == [1]


def test_extra_validates_its_request_like_any_sandbox_of_the_cell() -> None:
    adapter = world("h100x4")
    cell = make_cell("exclusive.concurrent", adapter)
    with pytest.raises(RequestError):
        cell.extra(GpuRequest.of_count(0), wait_s=1.0)
    assert adapter.provisioned == []


def test_on_bare_host_provisions_on_the_host_driver_and_closes_on_leaving() -> None:
    adapter = world("h100x4")
    host = FakeAdapter(adapter.inv)
    host.name = "host"
    runtime = FakeRuntime(adapter, host)
    cell = make_cell("cuda.bandwidth", adapter, runtime=runtime)
    uuid = adapter.inv.gpus[2].uuid
    with cell.on_bare_host(GpuRequest.of_ids([uuid])) as baseline:
        assert baseline in host.provisioned and adapter.provisioned == []
        assert baseline.granted == frozenset({uuid})
        assert host.provisions[-1]["labels"]["dev.gpuconform.case"] == "cuda.bandwidth"
        assert host.provisions[-1]["image"] == runtime.image("host", "python")  # chosen as for any sandbox
    assert [b.closes for b in host.provisioned] == [1]
    assert cell.granted is None  # the reference is not the case's sandbox


def test_on_bare_host_closes_when_the_body_fails() -> None:
    adapter = world("h100x4")
    host = FakeAdapter(adapter.inv)
    host.name = "host"
    cell = make_cell("cuda.bandwidth", adapter, runtime=FakeRuntime(adapter, host))
    with pytest.raises(RuntimeError), cell.on_bare_host(GpuRequest.default()):
        raise RuntimeError("probe crashed")
    assert [b.closes for b in host.provisioned] == [1]


def test_on_bare_host_validates_its_request() -> None:
    adapter = world("h100x4")
    host = FakeAdapter(adapter.inv)
    host.name = "host"
    cell = make_cell("cuda.bandwidth", adapter, runtime=FakeRuntime(adapter, host))
    with pytest.raises(RequestError), cell.on_bare_host(GpuRequest.of_count(0)):
        pass
    assert host.provisioned == []
