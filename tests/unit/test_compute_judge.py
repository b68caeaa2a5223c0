"""The cuda.* verdict rules, each shown able to pass and to fail, on hand-built probe documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpuconform.workloads.compute_judge import (
    DEFAULT_THRESHOLDS,
    ProbeOutputError,
    environment_gap,
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


# ---- a probe environment without the CUDA stack, on a real host ----------------------------------


def with_stack(
    document: dict[str, Any],
    *,
    cupy: str = "usable",
    libcuda: bool = True,
    driver_ok: bool = True,
    driver_error: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """``document`` plus the probe's ``stack`` and ``driver_api`` blocks as the probe writes them."""
    code, error = driver_error or (None, None)
    return {
        **document,
        "stack": {
            "python": "/usr/bin/python3",
            "python_version": "3.11.2",
            "numpy": "1.24.2",
            "cupy": {
                "present": cupy != "absent",
                "usable": cupy == "usable",
                "version": "13.6.0" if cupy == "usable" else None,
                "error": {"absent": "ModuleNotFoundError: No module named 'cupy'"}.get(
                    cupy, None if cupy == "usable" else "ImportError: libnvrtc.so.12: cannot open"
                ),
            },
            "libcuda": {"library": "libcuda.so.1", "loaded": libcuda},
        },
        "driver_api": {
            "loaded": libcuda,
            "ok": driver_ok and libcuda,
            "error": error
            or (
                None
                if libcuda
                else "libcuda.so.1 could not be loaded: libcuda.so.1: cannot open shared object"
            ),
            "error_code": code,
            "driver_version": 12080 if libcuda else None,
        },
    }


def test_no_cupy_on_a_real_host_skips_the_checks_naming_the_probe_image() -> None:
    document = with_stack(doc(device(A), mode="driver"), cupy="absent")
    document["devices"][0]["checks"] = None
    gap = environment_gap(document, needs_cupy=True, simulated_host=False)
    assert gap is not None
    assert gap.verdict == "skip"
    assert gap.reason == (
        "precondition: the probe environment (python /usr/bin/python3) has no cupy: "
        "pass --probe-image IMAGE with python3, numpy and cupy (see images/probe)"
    )
    # cuda.init and cuda.uuid need only the driver API, which answered.
    assert environment_gap(document, needs_cupy=False, simulated_host=False) is None
    # The same document, judged without the gap check, would blame the driver.
    assert judge_vectoradd(document, frozenset([A]), 1).verdict == "fail"


def test_cupy_that_does_not_import_is_an_error_naming_its_import_error() -> None:
    gap = environment_gap(with_stack(doc(device(A)), cupy="broken"), needs_cupy=True, simulated_host=False)
    assert gap is not None
    assert gap.verdict == "error"
    assert "does not import (ImportError: libnvrtc.so.12: cannot open)" in gap.reason


def test_libcuda_missing_on_a_real_host_is_an_error_not_a_failed_init() -> None:
    document = with_stack(doc(mode="none", ok=False, error="no CUDA device"), cupy="absent", libcuda=False)
    for needs_cupy in (False, True):
        gap = environment_gap(document, needs_cupy=needs_cupy, simulated_host=False)
        assert gap is not None
        assert gap.verdict == "error"
        assert gap.reason.startswith(
            "the probe environment (python /usr/bin/python3) cannot load libcuda.so.1: "
            "libcuda.so.1 could not be loaded"
        )
        assert "NVIDIA_DRIVER_CAPABILITIES=compute" in gap.reason


def test_the_toolkit_stub_libcuda_is_named() -> None:
    stub = (34, "CUDA_ERROR_STUB_LIBRARY (34) from cuInit: CUDA driver is a stub library")
    document = with_stack(doc(mode="driver", ok=False, error=stub[1]), driver_ok=False, driver_error=stub)
    gap = environment_gap(document, needs_cupy=False, simulated_host=False)
    assert gap is not None
    assert (gap.verdict, "stub libcuda" in gap.reason) == ("error", True)


def test_cupy_runtime_newer_than_the_driver_is_an_error_naming_both_versions() -> None:
    too_new = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
    document = with_stack(doc(ok=False, error=too_new))
    document["cuda"]["runtime_version"] = 13000
    gap = environment_gap(document, needs_cupy=False, simulated_host=False)
    assert gap is not None
    assert gap.verdict == "error"
    assert "CUDA runtime 13000, newer than the host driver supports (CUDA 12080)" in gap.reason


def test_a_broken_cuda_with_the_stack_present_is_still_the_drivers_failure() -> None:
    bad = (999, "CUDA_ERROR_UNKNOWN (999) from cuInit: unknown error")
    document = with_stack(doc(mode="driver", ok=False, error=bad[1]), driver_ok=False, driver_error=bad)
    assert environment_gap(document, needs_cupy=False, simulated_host=False) is None
    assert judge_init(document, frozenset([A]), 1).verdict == "fail"


def test_no_gap_on_a_simulated_host_or_for_a_document_without_a_stack() -> None:
    document = with_stack(doc(mode="none", ok=False, error="no CUDA device"), cupy="absent", libcuda=False)
    assert environment_gap(document, needs_cupy=True, simulated_host=True) is None
    assert environment_gap(doc(device(A)), needs_cupy=True, simulated_host=False) is None
    # On a simulated host a sandbox that got no GPU still fails cuda.init, as the driver's fault.
    assert judge_init(document, frozenset([A]), 1).verdict == "fail"
