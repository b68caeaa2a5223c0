"""The cuda.* verdict rules, each shown able to pass and to fail, on hand-built probe documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from workloads.compute_judge import (
    DEFAULT_THRESHOLDS,
    ProbeOutputError,
    inconclusive,
    judge_bandwidth,
    judge_init,
    judge_matmul,
    judge_uuid,
    judge_vectoradd,
    parse_probe_output,
)

A = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
B = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
C = "GPU-cccccccc-0000-0000-0000-000000000000"


def figure(median: float) -> dict[str, Any]:
    return {"median": median, "spread": 0.01, "samples": [median]}


def device(uuid: str, *, h2d: float = 50.0, d2h: float = 50.0, d2d: float = 3000.0) -> dict[str, Any]:
    return {
        "ordinal": 0,
        "uuid": uuid,
        "name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "memory_total_mib": 81559,
        "checks": {
            "vectoradd": {"ok": True, "n": 1024, "max_abs_err": 0.0, "mismatches": 0, "error": None},
            "matmul": {"ok": True, "n": 512, "max_rel_err": 1e-7, "tolerance": 1e-3, "error": None},
            "reduction": {"ok": True, "n": 4096, "value": 1.0, "expected": 1, "error": None},
        },
        "bandwidth": {
            "bytes": 1 << 28,
            "judged": True,
            "error": None,
            "h2d_gbps": figure(h2d),
            "d2h_gbps": figure(d2h),
            "d2d_gbps": figure(d2d),
        },
        "matmul_tflops": None,
    }


def doc(
    *devices: dict[str, Any], mode: str = "cupy", ok: bool = True, error: str | None = None
) -> dict[str, Any]:
    return {
        "probe_version": 1,
        "mode": mode,
        "simulated": mode == "simulated",
        "cuda": {"ok": ok, "error": error, "device_count": len(devices) if ok else 0},
        "devices": list(devices) if ok else [],
        "errors": [],
    }


BROKEN = doc(ok=False, error="cudaErrorSystemNotReady: system not yet initialized")


# ---- parse_probe_output ------------------------------------------------------------------------


def test_parse_accepts_a_probe_document() -> None:
    assert parse_probe_output(json.dumps(doc(device(A))) + "\n")["devices"][0]["uuid"] == A


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        ("", "printed nothing"),
        ("Traceback (most recent call last):\n  File ...", "not one JSON document"),
        ('{"probe_version": 1}\n{"probe_version": 1}', "not one JSON document"),
        ("[1, 2]", "JSON list"),
        (json.dumps({**doc(device(A)), "probe_version": 2}), "probe_version is 2, expected 1"),
        (json.dumps({k: v for k, v in doc(device(A)).items() if k != "cuda"}), "lacks cuda"),
        (json.dumps({**doc(device(A)), "mode": "opencl"}), "mode 'opencl'"),
        (json.dumps({**doc(device(A)), "cuda": {"ok": "yes", "device_count": 1}}), "boolean ok"),
    ],
)
def test_parse_rejects_unusable_output_as_inconclusive(stdout: str, message: str) -> None:
    with pytest.raises(ProbeOutputError, match=message) as info:
        parse_probe_output(stdout)
    assert inconclusive(info.value).verdict == "inconclusive"


# ---- cuda.init ---------------------------------------------------------------------------------


def test_init_passes_when_cuda_counts_the_grant() -> None:
    result = judge_init(doc(device(A), device(B)), frozenset({A, B}), 2)
    assert result.verdict == "pass"
    assert result.parsed["simulated"] is False
    assert result.parsed["uuids"] == [A, B]


def test_init_fails_on_a_count_mismatch() -> None:
    result = judge_init(doc(device(A), device(B)), frozenset({A}), 1)
    assert result.verdict == "fail"
    assert "CUDA sees 2 device(s), expected 1" in result.reason


def test_init_failure_has_its_own_message_and_names_nvidia_smi_when_known() -> None:
    plain = judge_init(BROKEN, frozenset({A}), 1)
    assert plain.verdict == "fail"
    assert plain.reason == "CUDA failed to initialise: cudaErrorSystemNotReady: system not yet initialized"
    with_smi = judge_init(BROKEN, frozenset({A}), 1, smi_count=1)
    assert with_smi.reason.startswith("nvidia-smi lists 1 GPU(s) but CUDA failed to initialise: ")


def test_init_no_cuda_device_at_all_fails_when_gpus_were_granted() -> None:
    none = doc(mode="none", ok=False, error="no CUDA device: cupy is not usable")
    assert judge_init(none, frozenset({A}), 1).verdict == "fail"
    assert judge_init(none, frozenset(), 0).verdict == "pass"


def test_init_simulated_pass_is_marked_simulated() -> None:
    result = judge_init(doc(device(A), mode="simulated"), frozenset({A}), 1)
    assert result.verdict == "pass"
    assert result.parsed["simulated"] is True
    assert "simulated" in result.reason


# ---- cuda.uuid ---------------------------------------------------------------------------------


def test_uuid_passes_when_cuda_uuids_equal_the_grant_ignoring_case() -> None:
    assert judge_uuid(doc(device(A.upper()), device(B)), frozenset({A, B}), 2).verdict == "pass"


def test_uuid_mismatch_names_the_extra_and_the_missing_gpu() -> None:
    result = judge_uuid(doc(device(A), device(C)), frozenset({A, B}), 2)
    assert result.verdict == "fail"
    assert f"not granted but seen ['{C}']" in result.reason
    assert f"granted but not seen ['{B}']" in result.reason


def test_uuid_without_known_grant_checks_count_and_inventory() -> None:
    inventory = {A, B}
    assert judge_uuid(doc(device(A)), None, 1, inventory).verdict == "pass"
    wrong_count = judge_uuid(doc(device(A), device(B)), None, 1, inventory)
    assert wrong_count.verdict == "fail"
    assert "expected 1" in wrong_count.reason
    stranger = judge_uuid(doc(device(C)), None, 1, inventory)
    assert stranger.verdict == "fail"
    assert "not in the host inventory" in stranger.reason


def test_uuid_fails_on_duplicates_missing_uuids_and_dead_cuda() -> None:
    assert "same UUID twice" in judge_uuid(doc(device(A), device(A)), None, 2, {A}).reason
    assert "without a UUID" in judge_uuid(doc({**device(A), "uuid": None}), None, 1, {A}).reason
    dead = judge_uuid(BROKEN, frozenset({A}), 1)
    assert dead.verdict == "fail"
    assert "CUDA failed to initialise" in dead.reason


# ---- cuda.vectoradd / cuda.matmul --------------------------------------------------------------


def test_checks_pass_when_ok_on_every_granted_device() -> None:
    both = doc(device(A), device(B))
    assert judge_vectoradd(both, frozenset({A, B}), 2).verdict == "pass"
    assert judge_matmul(both, None, 2).verdict == "pass"


def test_vectoradd_fails_naming_the_device_that_got_it_wrong() -> None:
    bad = device(B)
    bad["checks"]["vectoradd"].update(ok=False, mismatches=3, max_abs_err=1.0)
    result = judge_vectoradd(doc(device(A), bad), frozenset({A, B}), 2)
    assert result.verdict == "fail"
    assert f"vectoradd on {B}: 3 of 1024 elements wrong" in result.reason


def test_matmul_fails_above_tolerance_and_on_a_raised_error() -> None:
    off = device(A)
    off["checks"]["matmul"].update(ok=False, max_rel_err=0.5)
    assert "relative error 0.5 exceeds the tolerance 0.001" in judge_matmul(doc(off), None, 1).reason
    raised = device(A)
    raised["checks"]["matmul"].update(ok=False, error="CUDARuntimeError: cudaErrorIllegalAddress")
    assert "raised CUDARuntimeError" in judge_matmul(doc(raised), None, 1).reason


def test_checks_fail_when_a_granted_device_was_not_tested() -> None:
    absent = judge_vectoradd(doc(device(A)), frozenset({A, B}), 2)
    assert absent.verdict == "fail"
    assert f"did not run on granted GPU(s) ['{B}']" in absent.reason
    no_result = device(A)
    del no_result["checks"]["matmul"]
    assert "reports no result" in judge_matmul(doc(no_result), frozenset({A}), 1).reason
    assert judge_matmul(doc(device(A)), None, 2).verdict == "fail"
    assert judge_vectoradd(BROKEN, frozenset({A}), 1).verdict == "fail"


def test_simulated_check_results_carry_simulated() -> None:
    result = judge_vectoradd(doc(device(A), mode="simulated"), frozenset({A}), 1)
    assert result.verdict == "pass"
    assert result.parsed["simulated"] is True
    assert result.parsed["results"][A]["ok"] is True


# ---- cuda.bandwidth ----------------------------------------------------------------------------


def test_bandwidth_is_skipped_not_passed_on_a_simulated_host() -> None:
    sim = doc(device(A), mode="simulated")
    for sandbox, host in ((sim, doc(device(A))), (doc(device(A)), sim)):
        result = judge_bandwidth(sandbox, host)
        assert result.verdict == "skip"
        assert result.reason == "bandwidth parity is not judged on a simulated host"


def test_bandwidth_passes_at_parity_and_records_ratios() -> None:
    result = judge_bandwidth(doc(device(A, h2d=49.0)), doc(device(A), device(B)))
    assert result.verdict == "pass"
    assert result.parsed["ratios"][A]["h2d_gbps"] == pytest.approx(0.98)


def test_bandwidth_below_threshold_fails_naming_metric_and_both_figures() -> None:
    result = judge_bandwidth(doc(device(A, h2d=14.0)), doc(device(A, h2d=55.0)))
    assert result.verdict == "fail"
    assert (
        f"h2d_gbps on {A}: sandbox 14.0 GB/s is 0.25 of the host's 55.0 GB/s (threshold 0.90)"
        in result.reason
    )
    assert "d2d_gbps" not in result.reason


def test_bandwidth_thresholds_are_per_metric() -> None:
    sandbox, host = doc(device(A, d2d=1800.0)), doc(device(A, d2d=3000.0))
    assert judge_bandwidth(sandbox, host).verdict == "fail"
    assert judge_bandwidth(sandbox, host, {**DEFAULT_THRESHOLDS, "d2d_gbps": 0.5}).verdict == "pass"
    with pytest.raises(ValueError, match="unknown bandwidth metric"):
        judge_bandwidth(sandbox, host, {"pcie_gbps": 0.9})


def test_bandwidth_missing_baseline_or_figures_is_never_a_pass() -> None:
    assert judge_bandwidth(doc(device(A)), BROKEN).verdict == "error"
    assert judge_bandwidth(BROKEN, doc(device(A))).verdict == "fail"
    assert judge_bandwidth(doc(device(A)), doc(device(B))).verdict == "error"
    failed_copy = device(A)
    failed_copy["bandwidth"]["error"] = "CUDARuntimeError: cudaErrorMemoryAllocation"
    assert judge_bandwidth(doc(failed_copy), doc(device(A))).verdict == "fail"
    no_median = device(A)
    no_median["bandwidth"]["d2h_gbps"]["median"] = None
    assert judge_bandwidth(doc(no_median), doc(device(A))).verdict == "inconclusive"
