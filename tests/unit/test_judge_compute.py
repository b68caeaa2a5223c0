"""cuda.* judged on the probe document a fake sandbox returns (issue 18).

Runs the real suite functions through conformance/compute.py (probe copied in, run once,
document parsed and judged) on the simulator's faults, the probe's failure shapes and, for
cuda.bandwidth, a real-host inventory (bandwidth is never judged on a simulated one).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpuconform.conformance.compute import PROBE_PATH
from gpuconform.reports.evidence import Verdict
from tests.unit.fakesandbox import Answer, Shape, inventory, probe_doc, run_case, run_cases, world

INV = inventory("h100x4")
U = [g.uuid for g in INV.gpus]
PASS, FAIL, SKIP, ERROR = Verdict.PASS, Verdict.FAIL, Verdict.SKIP, Verdict.ERROR
INCONCLUSIVE = Verdict.INCONCLUSIVE


def probe(document: dict[str, Any] | str) -> Shape:
    return Shape(probe=document if isinstance(document, str) else document)


def crashed(code: int, stderr: str) -> Shape:
    return Shape(answers={"python3 ": Answer(code, "", stderr)})


NO_MEDIAN = probe_doc([U[0]], simulated=False)
NO_MEDIAN["devices"][0]["bandwidth"]["d2d_gbps"] = {"median": None}

TABLE: list[Any] = [
    pytest.param("cuda.init", {}, PASS, ["CUDA initialised with 1 device(s), as granted"], id="init-healthy"),
    pytest.param(
        "cuda.init",
        {"faults": [("cuda-unusable", 0)]},
        FAIL,
        ["CUDA failed to initialise: CUDA_ERROR_UNKNOWN"],
        id="init-cuda-unusable",
    ),
    pytest.param(
        "cuda.init",
        {"faults": [("missing-gpu", 0)]},
        FAIL,
        ["CUDA failed to initialise", "no CUDA-capable device"],
        id="init-missing-gpu",
    ),
    pytest.param(
        "cuda.init",
        {"faults": [("extra-gpu", 0)]},
        FAIL,
        ["CUDA sees 2 device(s), expected 1"],
        id="init-extra-gpu",
    ),
    pytest.param(
        "cuda.init",
        {"shape": probe(probe_doc([U[0]], cuda_error="cudaErrorSystemNotReady (802)"))},
        FAIL,
        ["802"],
        id="init-fabric-manager",
    ),
    pytest.param(
        "cuda.init",
        {"shape": probe("Traceback (most recent call last):\n")},
        INCONCLUSIVE,
        ["could not parse the evidence"],
        id="init-unparseable",
    ),
    pytest.param(
        "cuda.init",
        {"shape": probe({**probe_doc([U[0]]), "probe_version": 0})},
        INCONCLUSIVE,
        ["probe_version"],
        id="init-old-probe",
    ),
    pytest.param(
        "cuda.init",
        {"shape": crashed(139, "Segmentation fault")},
        ERROR,
        ["the compute probe crashed (exit 139)", "Segmentation"],
        id="init-probe-crash",
    ),
    pytest.param(
        "cuda.init", {"python": False}, SKIP, ["no python3 for the compute probe"], id="init-no-python"
    ),
    pytest.param("cuda.uuid", {}, PASS, ["exactly the 1 granted UUID"], id="uuid-healthy"),
    pytest.param(
        "cuda.uuid",
        {"faults": [("uuid-mismatch", 0)]},
        FAIL,
        ["differ from the grant", f"granted but not seen ['{U[0]}']"],
        id="uuid-mismatch",
    ),
    pytest.param(
        "cuda.uuid",
        {"faults": [("wrong-gpu", 0)]},
        FAIL,
        [f"not granted but seen ['{U[1]}']"],
        id="uuid-wrong-gpu",
    ),
    pytest.param(
        "cuda.uuid",
        {"faults": [("cuda-unusable", 0)]},
        FAIL,
        ["no CUDA UUIDs to compare"],
        id="uuid-cuda-unusable",
    ),
    pytest.param(
        "cuda.uuid",
        {"granted_known": False, "faults": [("uuid-mismatch", 0)]},
        FAIL,
        ["not in the host inventory"],
        id="uuid-driver-chose-foreign",
    ),
    pytest.param("cuda.vectoradd", {}, PASS, ["vectoradd correct on 1 device(s)"], id="vectoradd-healthy"),
    pytest.param(
        "cuda.vectoradd",
        {"shape": probe(probe_doc([U[0]], check_ok=False))},
        FAIL,
        ["7 of 1024 elements wrong"],
        id="vectoradd-wrong",
    ),
    pytest.param(
        "cuda.vectoradd",
        {"faults": [("missing-gpu", 0)]},
        FAIL,
        ["vectoradd could not run"],
        id="vectoradd-missing-gpu",
    ),
    pytest.param(
        "cuda.vectoradd",
        {"faults": [("wrong-gpu", 0)]},
        FAIL,
        [f"did not run on granted GPU(s) ['{U[0]}']"],
        id="vectoradd-wrong-gpu",
    ),
    pytest.param("cuda.matmul", {}, PASS, ["matmul correct"], id="matmul-healthy"),
    pytest.param(
        "cuda.matmul",
        {"shape": probe(probe_doc([U[0]], check_ok=False))},
        FAIL,
        ["relative error 0.5 exceeds the tolerance"],
        id="matmul-wrong",
    ),
    pytest.param(
        "cuda.matmul",
        {"faults": [("cuda-unusable", 0)]},
        FAIL,
        ["matmul could not run"],
        id="matmul-cuda-unusable",
    ),
    pytest.param("cuda.bandwidth", {}, SKIP, ["not judged on a simulated host"], id="bandwidth-simulated"),
    pytest.param(
        "cuda.bandwidth",
        {"simulated": False, "shape": probe(NO_MEDIAN)},
        INCONCLUSIVE,
        ["d2d_gbps on", "has no median"],
        id="bandwidth-no-median",
    ),
    pytest.param(
        "cuda.init",
        {
            "shape": Shape(
                answers={
                    "python3 ": Answer(
                        1, "\n" + json.dumps(probe_doc([U[0]])), "dlopen: No such file or directory"
                    )
                }
            )
        },
        ERROR,
        ["the compute probe crashed (exit 1)"],
        id="init-probe-exit-1-with-document",
    ),
    pytest.param(
        "cuda.init",
        {"shape": crashed(1, "E" * 400)},
        ERROR,
        ["the compute probe crashed (exit 1)"],
        id="init-probe-long-stderr",
    ),
]


@pytest.mark.parametrize(("case", "stack", "verdict", "words"), TABLE)
def test_compute(case: str, stack: dict[str, Any], verdict: Verdict, words: list[str]) -> None:
    outcome = run_case(case, world(**stack))
    assert outcome.verdict is verdict, outcome.reason
    for word in words:
        assert word in outcome.reason, f"{word!r} not in {outcome.reason!r}"


def test_the_probe_is_copied_in_and_run() -> None:
    adapter = world()
    outcome = run_case("cuda.init", adapter)
    (sandbox,) = adapter.provisioned
    assert PROBE_PATH in sandbox.files
    assert b"probe_version" in sandbox.files[PROBE_PATH]
    assert outcome.cell.commands[-1]["argv"] == ["python3", PROBE_PATH]


@pytest.mark.parametrize(
    ("fraction", "verdict", "words"),
    [
        pytest.param(1.0, PASS, ["every sandbox/host ratio at or above its threshold"], id="parity"),
        pytest.param(0.5, FAIL, ["h2d_gbps on", "is 0.50 of the host's", "threshold 0.90"], id="half-speed"),
    ],
)
def test_bandwidth_on_a_real_host(fraction: float, verdict: Verdict, words: list[str]) -> None:
    sandbox = world(simulated=False, shape=Shape(bandwidth=fraction))
    host = world(simulated=False)
    host.name = "host"
    outcome = run_case("cuda.bandwidth", sandbox, host)
    assert outcome.verdict is verdict, outcome.reason
    for word in words:
        assert word in outcome.reason
    assert host.provisioned and all(s.closed for s in host.provisioned)


def test_a_real_host_without_cupy_is_the_runners_gap_not_a_fail() -> None:
    doc = probe_doc([U[0]], simulated=False)
    doc["stack"] = {"python": "3.11", "cupy": {"present": False}, "libcuda": {"loaded": True}}
    outcome = run_case("cuda.vectoradd", world(simulated=False, shape=Shape(probe=doc)))
    assert outcome.verdict is SKIP
    assert "has no cupy" in outcome.reason
    doc["cuda"] = {"ok": False, "error": "libcuda.so.1: cannot open", "device_count": 0}
    doc["stack"]["libcuda"] = {"loaded": False, "library": "libcuda.so.1"}
    broken = run_case("cuda.init", world(simulated=False, shape=Shape(probe=json.loads(json.dumps(doc)))))
    assert broken.verdict is ERROR
    assert "cannot load libcuda.so.1" in broken.reason


def test_the_probe_runs_once_per_sandbox_and_its_document_is_reused() -> None:
    outcomes = run_cases(["cuda.init", "cuda.uuid", "cuda.vectoradd"], world())
    assert [o.verdict for o in outcomes] == [PASS, PASS, PASS]
    first, *rest = (o.cell.commands for o in outcomes)
    assert first[-1]["argv"] == ["python3", PROBE_PATH] and "reused" not in first[-1]
    for commands in rest:
        assert commands == [{**first[-1], "reused": True}]
