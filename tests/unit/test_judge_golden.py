"""The judges' whole output, pinned: verdict, reason, parsed evidence, commands (issue 18).

The table tests (test_judge_*.py) hold each verdict and the words naming the defect; this file
holds everything else a judge writes into the evidence record (the full reason, ``parsed``,
``seen``, ``details``, the commands run) for every row of those tables, for the pure cuda.*
judges over a grid of probe documents, and for the matrix diff and release gate over a grid of
matrices. Mutation testing (.ci/mutation, docs/mutation.md) showed those were unpinned: a judge
could drop its evidence or garble its reason and every verdict test still passed.

The expected values live in tests/unit/data/judges.golden.json. After an intended change to a
judge, regenerate and review the diff like code (it is the change's effect on every record):

    GPUCONFORM_UPDATE_GOLDEN=1 python3 -m pytest tests/unit/test_judge_golden.py
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from gpuconform.reports.diff import DriverSelectionError, Waiver, WaiverError, diff, gate, load_waivers
from gpuconform.reports.evidence import Verdict
from gpuconform.workloads import compute_judge as cj
from tests.unit import test_judge_compute, test_judge_isolation, test_judge_selection, test_judge_visibility
from tests.unit.fakesandbox import FakeAdapter, run_case, run_cases, world
from tests.unit.test_compute_judge import A, B, C, device, doc, with_stack
from tests.unit.test_diff_gate import make_matrix

GOLDEN = Path(__file__).parent / "data" / "judges.golden.json"
UPDATE = os.environ.get("GPUCONFORM_UPDATE_GOLDEN") == "1"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


# ---- the fake-sandbox tables ---------------------------------------------------------------------


def _rows() -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """Every table row of the test_judge_* files, as (key, how to run it)."""

    def runner(case: str, build: Callable[[], FakeAdapter]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            adapter = build()
            outcome = run_case(case, adapter)
            cell = outcome.cell
            return {
                "timings": cell.timings,
                "provisions": adapter.provisions,
                "leftover_queries": adapter.leftover_queries,
                "sandboxes": [
                    {"id": b.id, "closes": b.closes, "timeouts": b.timeouts, "files": b.modes}
                    for b in adapter.provisioned
                ],
                "consoles": cell.console_logs(),
                "verdict": outcome.verdict.value,
                "reason": outcome.reason,
                "parsed": cell.parsed,
                "seen": cell.seen,
                "granted": sorted(cell.granted) if cell.granted is not None else None,
                "details": cell.details,
                "request": cell.request.to_json() if cell.request else None,
                "commands": [
                    [*c["argv"], c["sandbox"], c["exit_code"], bool(c.get("reused"))] for c in cell.commands
                ],
            }

        return run

    tables: list[tuple[str, str | None, list[Any], Callable[..., FakeAdapter]]] = [
        ("smi.default", "smi.default", test_judge_visibility.SMI_DEFAULT, lambda stack: world(**stack)),
        (
            "smi.none",
            "smi.none",
            test_judge_visibility.SMI_NONE,
            lambda shape: world(shape_for={"none": shape}),
        ),
        ("smi.all", "smi.all", test_judge_visibility.SMI_ALL, lambda stack: world(**stack)),
        ("smi.nodes", "smi.nodes", test_judge_visibility.SMI_NODES, lambda stack: world(**stack)),
        ("exclusive", "exclusive.concurrent", test_judge_isolation.EXCLUSIVE, lambda g, s: world(g, **s)),
        ("escalation", "env.escalation", test_judge_isolation.ESCALATION, lambda stack: world(**stack)),
        ("selection", None, test_judge_selection.TABLE, lambda stack: world(**stack)),
        ("compute", None, test_judge_compute.TABLE, lambda stack: world(**stack)),
    ]
    extra: list[tuple[str, str, dict[str, Any]]] = [
        ("teardown/fails", "exclusive.concurrent", {"close_error": "stuck"}),
        ("teardown/fails-in-case", "release", {"close_error": "stuck"}),
        ("console/kept", "smi.default", {"console": "c" * 5000}),
        ("console/empty", "smi.default", {"console": ""}),
        ("teardown/untimed-release", "release", {"teardown_timing": False}),
        ("teardown/untimed-own", "exclusive.concurrent", {"teardown_timing": False}),
    ]
    for key, the_case, stack in extra:
        yield key, runner(the_case, partial(world, **stack))
    for prefix, case, table, build in tables:
        for param in table:
            values = param.values
            if case is None:  # (case, stack, verdict, words)
                the_case, args = values[0], values[1:2]
            else:
                the_case, args = case, values[: len(values) - 2]
            yield f"{prefix}/{param.id}", runner(the_case, partial(build, *args))


def _shared_runs() -> dict[str, Any]:
    adapter = world()
    outcomes = run_cases(["cuda.init", "cuda.uuid", "smi.default", "cuda.matmul"], adapter)
    return {
        "verdicts": [(o.verdict.value, o.reason) for o in outcomes],
        "commands": [o.cell.commands for o in outcomes],
        "timings": [o.cell.timings for o in outcomes],
        "sandboxes": [(b.id, b.closed, b.timeouts, b.modes) for b in adapter.provisioned],
    }


# ---- the pure cuda.* judges ----------------------------------------------------------------------


def _judgement(j: cj.Judgement | None) -> Any:
    return None if j is None else {"verdict": j.verdict, "reason": j.reason, "parsed": j.parsed}


def _judged(judge: Callable[..., cj.Judgement | None], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """A judge's call bound to its arguments now and judged when the golden row runs (a typed
    stand-in for a lambda with default arguments, whose type mypy cannot infer)."""
    return lambda: _judgement(judge(*args, **kwargs))


def _docs() -> dict[str, dict[str, Any]]:
    bad_vec = device(A)
    bad_vec["checks"]["vectoradd"] = {
        "ok": False,
        "n": 1024,
        "max_abs_err": 3.0,
        "mismatches": 9,
        "error": None,
    }
    bad_mat = device(A)
    bad_mat["checks"]["matmul"] = {
        "ok": False,
        "n": 512,
        "max_rel_err": 0.2,
        "tolerance": 1e-3,
        "error": None,
    }
    raised = device(A)
    raised["checks"]["vectoradd"] = {"ok": False, "error": "CUDARuntimeError: launch failed"}
    raised["checks"]["matmul"] = {"ok": False, "error": "CUBLAS_STATUS_NOT_INITIALIZED"}
    odd = device(A)
    odd["checks"]["vectoradd"] = {"ok": "yes"}
    odd["checks"]["matmul"] = {"ok": None, "strange": 1}
    unchecked = device(A)
    unchecked["checks"] = {}
    no_uuid = device(A)
    no_uuid["uuid"] = None
    upper = device(A.upper().replace("GPU-", "GPU-"))
    return {
        "one": doc(device(A)),
        "two": doc(device(A), device(B)),
        "three": doc(device(A), device(B), device(C)),
        "upper": doc(upper),
        "dup": doc(device(A), device(A)),
        "no-uuid": doc(no_uuid),
        "bad-vectoradd": doc(bad_vec),
        "bad-matmul": doc(bad_mat),
        "raised": doc(raised),
        "odd-checks": doc(odd),
        "unchecked": doc(unchecked),
        "broken": doc(ok=False, error="cudaErrorSystemNotReady: system not yet initialized"),
        "broken-no-text": doc(ok=False),
        "none": doc(),
        "sim-one": doc(device(A), mode="simulated"),
        "sim-two": doc(device(A), device(B), mode="simulated"),
        "zero-ok": {**doc(), "cuda": {"ok": True, "error": None, "device_count": 0}},
        "count-none": {**doc(device(A)), "cuda": {"ok": True, "error": None, "device_count": None}},
        "sim-flag-only": {**doc(device(A)), "simulated": True},
        "sim-mode-only": {**doc(device(A), mode="simulated"), "simulated": False},
        "empty-uuid": doc({**device(A), "uuid": ""}),
    }


GRANTS: dict[str, tuple[frozenset[str] | None, int]] = {
    "A": (frozenset([A]), 1),
    "AB": (frozenset([A, B]), 2),
    "B": (frozenset([B]), 1),
    "none-granted": (frozenset(), 0),
    "chose-1": (None, 1),
    "chose-2": (None, 2),
}


def _bandwidth_docs() -> dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, float] | None]]:
    slow = device(A, h2d=20.0, d2h=44.0)
    no_median = device(A)
    no_median["bandwidth"]["d2d_gbps"] = {"median": 0}
    errored = device(A)
    errored["bandwidth"] = {"error": "cudaErrorMemoryAllocation", "h2d_gbps": None}
    empty = device(A)
    empty["bandwidth"] = {}
    host, host2 = doc(device(A)), doc(device(A), device(B))
    return {
        "parity": (doc(device(A)), host, None),
        "parity-two": (doc(device(A), device(B, d2d=2900.0)), host2, None),
        "slow": (doc(slow), host, None),
        "slow-one-metric": (doc(slow), host, {"d2h_gbps": 0.9}),
        "exact-threshold": (doc(device(A, h2d=45.0)), host, None),
        "no-median": (doc(no_median), host, None),
        "host-no-median": (doc(device(A)), doc(no_median), None),
        "sandbox-errored": (doc(errored), host, None),
        "host-errored": (doc(device(A)), doc(errored), None),
        "sandbox-empty": (doc(empty), host, None),
        "host-lacks-gpu": (doc(device(B)), host, None),
        "upper-uuid": (doc(device(A.upper())), host, None),
        "sandbox-broken": (doc(ok=False, error="CUDA_ERROR_UNKNOWN"), host, None),
        "host-broken": (doc(device(A)), doc(ok=False, error="no device"), None),
        "no-devices": (doc(), doc(), None),
        "simulated": (doc(device(A), mode="simulated"), doc(device(A), mode="simulated"), None),
        "host-simulated": (doc(device(A)), doc(device(A), mode="simulated"), None),
        "half-gbps": (doc(device(A, h2d=0.5)), doc(device(A, h2d=0.5)), None),
    }


def _gaps() -> dict[str, dict[str, Any]]:
    too_new = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
    newer = with_stack(doc(ok=False, error=too_new))
    newer["cuda"]["runtime_version"] = 13000
    newer["driver_api"]["driver_version"] = 12040
    stub = (34, "CUDA_ERROR_STUB_LIBRARY (34) from cuInit: CUDA driver is a stub library")
    return {
        "healthy": with_stack(doc(device(A))),
        "no-cupy": with_stack(doc(device(A), mode="driver"), cupy="absent"),
        "broken-cupy": with_stack(doc(device(A), mode="driver"), cupy="broken"),
        "no-libcuda": with_stack(
            doc(mode="none", ok=False, error="no CUDA device"), cupy="absent", libcuda=False
        ),
        "libcuda-but-ok": with_stack(doc(device(A)), libcuda=False),
        "stub": with_stack(doc(mode="driver", ok=False, error=stub[1]), driver_ok=False, driver_error=stub),
        "stub-code-but-ok": with_stack(doc(device(A)), driver_error=stub),
        "too-new": newer,
        "too-new-driver-down": {**newer, "driver_api": {**newer["driver_api"], "ok": False}},
        "too-new-not-cupy": {**newer, "mode": "driver"},
        "no-stack": doc(device(A)),
        "libcuda-unnamed": {
            **with_stack(doc(mode="none", ok=False, error="no CUDA device"), libcuda=False),
            "stack": {"python": "/usr/bin/python3", "cupy": {}, "libcuda": {"loaded": False}},
        },
        "simulated": with_stack(doc(device(A), mode="simulated"), cupy="absent"),
    }


def _pure() -> Iterator[tuple[str, Callable[[], Any]]]:
    docs = _docs()
    judges = {"init": cj.judge_init, "vectoradd": cj.judge_vectoradd, "matmul": cj.judge_matmul}
    for dname, d in docs.items():
        for gname, (granted, count) in GRANTS.items():
            for jname, judge in judges.items():
                yield f"cj/{jname}/{dname}/{gname}", _judged(judge, d, granted, count)
            yield f"cj/uuid/{dname}/{gname}", _judged(cj.judge_uuid, d, granted, count, {A, B})
        yield f"cj/init-smi/{dname}", _judged(cj.judge_init, d, frozenset([A]), 1, smi_count=1)
        yield f"cj/ratios/{dname}", partial(cj.bandwidth_ratios, d, docs["two"])
    for bname, (mine, host, thresholds) in _bandwidth_docs().items():
        yield (
            f"cj/bandwidth/{bname}",
            _judged(cj.judge_bandwidth, mine, host)
            if thresholds is None
            else _judged(cj.judge_bandwidth, mine, host, thresholds),
        )
        yield f"cj/ratios/{bname}", partial(cj.bandwidth_ratios, mine, host)
    bare: dict[str, Any] = {"probe_version": 1}  # bandwidth_ratios reads documents that lack devices
    yield "cj/ratios/no-devices-key", lambda: cj.bandwidth_ratios(bare, docs["one"])
    yield "cj/ratios/host-no-devices-key", lambda: cj.bandwidth_ratios(docs["one"], bare)
    for gname, gdoc in _gaps().items():
        for needs_cupy in (False, True):
            for simulated_host in (False, True):
                key = f"cj/gap/{gname}/cupy={needs_cupy}/sim={simulated_host}"
                yield (
                    key,
                    _judged(cj.environment_gap, gdoc, needs_cupy=needs_cupy, simulated_host=simulated_host),
                )
        yield (
            f"cj/gap/{gname}/host-remedy",
            _judged(cj.environment_gap, gdoc, needs_cupy=True, simulated_host=False, remedy=cj.HOST_REMEDY),
        )
    outputs = {
        "empty": "  \n",
        "not-json": "Traceback (most recent call last):",
        "not-json-long": 'Traceback (most recent call last):\n  File "/tmp/gpuconform/cuda_probe.py", line 1',
        "list": "[1, 2]",
        "old": json.dumps({**docs["one"], "probe_version": 0}),
        "lacking": json.dumps({"probe_version": 1, "mode": "cupy"}),
        "bad-mode": json.dumps({**docs["one"], "mode": "opencl"}),
        "bad-cuda": json.dumps({**docs["one"], "cuda": []}),
        "bad-devices": json.dumps({**docs["one"], "devices": {}}),
        "ok-not-bool": json.dumps({**docs["one"], "cuda": {"ok": 1, "device_count": 1}}),
        "count-not-int": json.dumps({**docs["one"], "cuda": {"ok": True, "device_count": "1"}}),
        "device-not-object": json.dumps({**docs["one"], "devices": [1]}),
        "good": json.dumps(docs["one"]),
    }
    for oname, text in outputs.items():
        yield f"cj/parse/{oname}", partial(_parse, text)


def _parse(text: str) -> Any:
    try:
        return {"doc": dict(cj.parse_probe_output(text))}
    except cj.ProbeOutputError as exc:
        return _judgement(cj.inconclusive(exc))


# ---- the matrix diff and the gate ----------------------------------------------------------------

TODAY = date(2025, 6, 1)
P, F, R, E, S = Verdict.PASS, Verdict.FAIL, Verdict.REJECTED, Verdict.ERROR, Verdict.SKIP


def _waiver(driver: str, case: str, expires: date, host: str = "gpu-a") -> Waiver:
    return Waiver(host=host, driver=driver, case=case, reason=f"known {driver} {case}", expires=expires)


def _gates() -> Iterator[tuple[str, Callable[[], Any]]]:
    live, dead = date(2025, 6, 30), date(2025, 5, 31)
    current = {
        "same": {},
        "regressions": {
            ("docker", "smi.default"): F,
            ("podman", "count.over"): E,
            ("docker", "count.1"): None,
        },
        "improvements": {
            ("docker", "cuda.matmul"): P,
            ("docker", "count.2"): P,
            ("podman", "cuda.matmul"): F,
        },
        "new-cell": {("docker", "release"): P, ("podman", "release"): F},
        "rejected-to-pass": {("docker", "count.over"): P},
    }
    waivers = {
        "none": [],
        "live": [_waiver("docker", "smi.default", live), _waiver("podman", "count.over", live)],
        "expired": [_waiver("docker", "smi.default", dead)],
        "today": [_waiver("docker", "smi.default", TODAY)],
        "other-host": [_waiver("docker", "smi.default", live, host="gpu-b")],
        "unused": [_waiver("podman", "smi.default", live)],
        "twice": [_waiver("docker", "smi.default", live), _waiver("docker", "smi.default", live)],
    }
    for cname, changes in current.items():
        for simulated in (False, True):
            for wname, ws in waivers.items():
                key = f"gate/{cname}/sim={simulated}/{wname}"

                def run(c: Any = changes, s: bool = simulated, w: Any = ws) -> Any:
                    d = diff(make_matrix(), make_matrix(c, simulated=s))
                    g = gate(d, w, TODAY)
                    return {"diff": d.summary(), "gate": g.summary(), "passed": g.passed, "kept": g.diff is d}

                yield key, run
    for wname, text in WAIVER_FILES.items():
        yield f"waivers/{wname}", partial(_load_waivers, wname, text)
    yield from _scopes()
    yield (
        "gate/profile",
        lambda: diff(
            make_matrix(), make_matrix(podman_cases={"count.over": "reject", "cuda.*": "unsupported"})
        ).summary(),
    )
    yield "gate/sim-both", lambda: diff(make_matrix(simulated=True), make_matrix(simulated=True)).summary()


WAIVER_FILES: dict[str, str | None] = {
    "ok.yaml": "- {driver: docker, case: smi.default, reason: ' known ', expires: 2025-06-30}\n"
    "- {host: gpu-b, driver: podman, case: count.1, reason: x, expires: '2025-07-01'}\n"
    "- {driver: podman, case: count.2, reason: y, expires: 2025-07-02 12:00:00}\n",
    "wrapped.json": json.dumps(
        {"waivers": [{"driver": "d", "case": "c", "reason": "r", "expires": "2025-06-30"}]}
    ),
    "empty.yaml": "",
    "bad.json": "{",
    "bad.yaml": "- [unclosed\n",
    "tab.yaml": "a:\n\t- b\n",
    "not-a-list.yaml": "driver: docker\n",
    "extra-key.yaml": "waivers: []\nother: 1\n",
    "scalar-entry.yaml": "- 7\n",
    "unknown-field.yaml": "- {driver: d, case: c, reason: r, expires: 2025-06-30, ticket: 9}\n",
    "blank-reason.yaml": "- {driver: d, case: c, reason: '  ', expires: 2025-06-30}\n",
    "no-case.yaml": "- {driver: d, reason: r, expires: 2025-06-30}\n",
    "glob-driver.yaml": "- {driver: 'dock*', case: c, reason: r, expires: 2025-06-30}\n",
    "glob-case.yaml": "- {driver: d, case: 'smi.[ab]', reason: r, expires: 2025-06-30}\n",
    "bad-date.yaml": "- {driver: d, case: c, reason: r, expires: 'soon'}\n",
    "no-date.yaml": "- {driver: d, case: c, reason: r}\n",
    "int-date.yaml": "- {driver: d, case: c, reason: r, expires: 20250630}\n",
    "second-bad.yaml": "- {driver: d, case: c, reason: r, expires: 2025-06-30}\n- {driver: e, reason: r}\n",
    "no-driver.yaml": "- {case: c, reason: r, expires: 2025-06-30}\n",
    "host-blank.yaml": "- {host: '', driver: d, case: c, reason: r, expires: 2025-06-30}\n",
    "missing.yaml": None,
}


def _load_waivers(name: str, text: str | None) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        if text is not None:
            path.write_text(text)
        try:
            return [repr(w) for w in load_waivers(path)]
        except WaiverError as exc:
            return {"error": str(exc).replace(tmp, "TMP")}


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except DriverSelectionError as exc:
        return {"error": str(exc)}


def _profile_summary(before: Any, after: Any) -> str:
    return diff(before, after).summary()


def _scopes() -> Iterator[tuple[str, Callable[[], Any]]]:
    regressed: dict[tuple[str, str], Verdict | None] = {
        ("docker", "smi.default"): F,
        ("podman", "count.1"): F,
        ("podman", "release"): P,
    }
    runner = make_matrix(regressed, host="runner-7")
    base = make_matrix()
    scopes: dict[str, Callable[[], Any]] = {
        "drivers-docker": lambda: diff(base, make_matrix(regressed), drivers=["docker"]).summary(),
        "drivers-podman": lambda: diff(base, make_matrix(regressed), drivers=["podman", ""]).summary(),
        "drivers-unknown": lambda: diff(base, base, drivers=["qemu", "docker"]).summary(),
        "drivers-empty": lambda: diff(base, base, drivers=[""]).summary(),
        "hosts-gpu-a": lambda: diff(base, make_matrix(regressed), hosts=["gpu-a"]).summary(),
        "hosts-unknown": lambda: diff(base, base, hosts=["gpu-z"]).summary(),
        "host-map": lambda: diff(base, runner, host_map={"runner-7": "gpu-a"}).summary(),
        "host-map-hosts": lambda: diff(
            base, runner, host_map={"runner-7": "gpu-a"}, hosts=["gpu-a"]
        ).summary(),
        "no-host-map": lambda: diff(base, runner).summary(),
        "no-host-map-sim": lambda: diff(base, make_matrix(host="runner-7", simulated=True)).summary(),
        "drivers-only-current": lambda: diff(
            base, make_matrix({("qemu", "smi.default"): P}), drivers=["qemu"]
        ).summary(),
        "drivers-only-baseline": lambda: diff(
            make_matrix({("qemu", "smi.default"): P}), base, drivers=["qemu"]
        ).summary(),
        "runner-hosts": lambda: diff(base, runner, hosts=["runner-7"]).summary(),
    }
    for name, fn in scopes.items():
        yield f"scope/{name}", partial(_safe, fn)
    profile = base.profiles[("gpu-a", "docker")]
    changed = {
        "exclusive": {**profile, "exclusive": False},
        "oversubscribe": {**profile, "oversubscribe": "shared"},
        "notes": {**profile, "notes": "now shared"},
        "cases": {**profile, "cases": {"count.over": "supported", "smi.*": "unsupported"}},
        "no-cases": {k: v for k, v in profile.items() if k != "cases"},
    }
    for name, new in changed.items():
        current = replace(base, profiles={**base.profiles, ("gpu-a", "docker"): new})
        yield f"profile/{name}", partial(_profile_summary, base, current)
    dropped = replace(base, profiles={k: v for k, v in base.profiles.items() if k[1] != "docker"})
    yield "profile/removed", lambda: diff(base, dropped).summary()
    yield "profile/added", lambda: diff(dropped, base).summary()


# ---- the golden file -----------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[], Any]] = {
    **dict(_rows()),
    "shared/cuda-then-smi": _shared_runs,
    **dict(_pure()),
    **dict(_gates()),
}


def _load() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


_STORED = _load()


def test_the_golden_file_covers_every_scenario() -> None:
    if UPDATE:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        fresh = {key: _jsonable(run()) for key, run in sorted(SCENARIOS.items())}
        GOLDEN.write_text(json.dumps(fresh, indent=1, sort_keys=True) + "\n")
        return
    assert sorted(_STORED) == sorted(SCENARIOS), (
        "the golden file and the scenarios differ (hint: GPUCONFORM_UPDATE_GOLDEN=1, then review the diff)"
    )


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_golden(key: str) -> None:
    if UPDATE:
        pytest.skip("regenerating the golden file")
    assert key in _STORED, (
        f"{key} has no golden value (hint: GPUCONFORM_UPDATE_GOLDEN=1, then review the diff)"
    )
    assert _jsonable(SCENARIOS[key]()) == _STORED[key]
