"""The conformance suites through real engines against the simulated host, healthy and broken.

A case that passes on a broken stack is the worst defect this product can have, so each fault of
the simulated host is injected and the cell it must turn red is checked, with its evidence, on
Podman and on both Docker columns (docker-legacy: Engine 20.10 and the hook; docker-cdi: Engine 26
resolving the CDI spec itself).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from gpuconform.conformance.catalogue import CATALOGUE
from gpuconform.fixtures.sim.simgpu.profiles import sim_uuid

pytestmark = pytest.mark.integration

GOOD = {"pass", "rejected", "unsupported", "skip"}
HOLD_S = 3.0
VISIBILITY = [c.id for c in CATALOGUE if c.id.split(".")[0] in ("smi", "count", "device")]


def test_healthy_h100x4_podman_column_is_green_and_reports_are_written(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance("--drivers", "podman", "--sim", "h100x4", "-k", "smi or count or device")
    assert run.exit_code == 0, run.output[-3000:]
    verdicts = run.verdicts("podman")
    assert set(verdicts) == set(VISIBILITY)
    assert all(v in GOOD for v in verdicts.values()), verdicts
    assert verdicts["count.over"] == "rejected"
    assert verdicts["device.invalid"] == "rejected"
    assert verdicts["smi.default"] == "pass"
    record = run.record("podman", "smi.default")
    assert record["simulated"] is True
    assert len(record["granted"]) == 1 and record["seen"] == record["granted"]
    assert any(c["argv"] == ["nvidia-smi", "-L"] and c["exit_code"] == 0 for c in record["commands"])
    assert record["timings"]["provision_s"] > 0
    for name in ("results.json", "matrix.json", "matrix.md", "matrix.html"):
        assert (run.out_dir / name).stat().st_size > 0, name
    markdown = (run.out_dir / "matrix.md").read_text().splitlines()
    assert "| case | podman |" in markdown
    assert any(line.startswith("| `count.2` |") and "pass" in line for line in markdown)
    assert not run.containers(), "containers left behind"


def test_single_gpu_host_skips_what_needs_two_with_a_reason(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance("--drivers", "podman", "--sim", "single", "-k", "count.2 or device.pair or smi.default")
    assert run.exit_code == 0, run.output[-3000:]
    verdicts = run.verdicts("podman")
    assert verdicts == {"count.2": "skip", "device.pair": "skip", "smi.default": "pass"}
    assert "needs 2 GPUs" in run.record("podman", "count.2")["reason"]


FAULTS = [
    ("wrong-gpu:1", "device.each", "GPU 1"),
    ("extra-gpu:0", "smi.default", "extra"),
    ("extra-gpu:0", "count.1", "extra"),
    ("uuid-mismatch:2", "device.each", "not in the host inventory"),
    ("fallen-off-bus:3", "smi.all", "GPU_IS_LOST"),
    ("fallen-off-bus:3", "device.each", "GPU_IS_LOST"),
    ("missing-gpu:0", "smi.default", "missing"),
    ("missing-gpu:0", "smi.nodes", "do not match"),
]


@pytest.mark.parametrize("driver", ["podman", "docker-legacy", "docker-cdi"])
@pytest.mark.parametrize(("fault", "case", "reason_part"), FAULTS)
def test_each_fault_turns_its_case_red_with_evidence(  # type: ignore[no-untyped-def]
    conformance, driver: str, fault: str, case: str, reason_part: str
) -> None:
    run = conformance(
        "--drivers", driver, "--require-driver", driver, "--sim", "h100x4", "--sim-fault", fault, "-k", case
    )
    assert run.exit_code == 1, run.output[-3000:]
    record = run.record(driver, case)
    assert record["verdict"] == "fail", record
    assert reason_part in record["reason"], record["reason"]
    assert record["commands"], "a failed case must carry the commands it ran"
    assert fault in json.dumps(run.results["inventory"]) or fault in run.results["faults"]
    assert not run.containers(), "containers left behind after a failing run"


def test_qemu_guest_sees_the_wrong_gpu_the_fault_injects(conformance) -> None:  # type: ignore[no-untyped-def]
    """The same fault, through fw_cfg into a real guest booted under QEMU, reached over SSH."""
    run = conformance(
        "--drivers",
        "qemu",
        "--require-driver",
        "qemu",
        "--sim",
        "h100x2",
        "--sim-fault",
        "wrong-gpu:0",
        "-k",
        "device.each or smi.none",
    )
    verdicts = run.verdicts("qemu")
    assert verdicts == {"device.each": "fail", "smi.none": "pass"}, run.output[-3000:]
    gpus = run.results["inventory"]["gpus"]
    record = run.record("qemu", "device.each")
    assert record["parsed"]["expected"] == [gpus[0]["uuid"]]
    assert record["parsed"]["seen"] == [gpus[1]["uuid"]]
    assert record["parsed"].get("console_log"), "the VM console log belongs in the evidence"


def test_wrong_gpu_evidence_names_expected_and_seen_uuid(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers", "podman", "--sim", "h100x4", "--sim-fault", "wrong-gpu:1", "-k", "device.each"
    )
    gpus = run.results["inventory"]["gpus"]
    record = run.record("podman", "device.each")
    assert record["parsed"]["expected"] == [gpus[1]["uuid"]]
    assert record["parsed"]["seen"] == [gpus[2]["uuid"]]
    assert gpus[1]["uuid"] in record["reason"] and gpus[2]["uuid"] in record["reason"]


def test_unaffected_cases_stay_green_under_a_fault(conformance) -> None:  # type: ignore[no-untyped-def]
    """wrong-gpu:1 must not smear into cases that never touch GPU 1."""
    run = conformance(
        "--drivers",
        "podman",
        "--sim",
        "h100x4",
        "--sim-fault",
        "wrong-gpu:1",
        "-k",
        "smi.default or smi.none or count.1",
    )
    assert run.verdicts("podman") == {"smi.default": "pass", "smi.none": "pass", "count.1": "pass"}


def test_missing_engine_is_a_skip_with_reason_or_an_error_when_required(conformance) -> None:  # type: ignore[no-untyped-def]
    opt = ("--driver-opt", "podman.binary=/nonexistent/podman")
    skipped = conformance("--drivers", "podman", *opt, "-k", "smi.default")
    assert skipped.exit_code == 0, skipped.output[-2000:]
    record = skipped.record("podman", "smi.default")
    assert record["verdict"] == "skip" and "not installed" in record["reason"]
    required = conformance("--drivers", "podman", "--require-driver", "podman", *opt, "-k", "smi.default")
    assert required.exit_code != 0
    assert required.record("podman", "smi.default")["verdict"] == "error"


def test_unknown_driver_is_a_one_line_usage_error(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance("--drivers", "nosuch")
    assert run.exit_code == 4, run.output
    assert "unknown driver 'nosuch'" in run.output
    assert "Traceback" not in run.output


def test_parallel_workers_wait_for_gpus_another_process_holds(conformance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two workers each need every GPU while a third process (this test) holds them all.

    Neither column may provision on GPUs another process owns: the first waits for the leases
    (and says so in lease_wait_s), the scheduler holds the other back while the first holds
    every GPU, and both pass once the GPUs are given back, after it.
    """
    lease_dir = tmp_path / "leases"  # the run's --lease-dir (conftest.conformance_argv)
    lease_dir.mkdir()
    holding, released = threading.Event(), threading.Event()
    released_at: list[float] = []

    def give_back_once_asked() -> None:  # filelock's locks belong to the thread that took them
        held = [FileLock(str(lease_dir / f"{sim_uuid('h100x4', i)}.lock")) for i in range(4)]
        for lock in held:
            lock.acquire(timeout=0)
        holding.set()
        deadline = time.monotonic() + 240
        while not (lease_dir / "turnstile.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # a worker has started asking for GPUs
        time.sleep(HOLD_S)
        released_at.append(time.time())
        for lock in held:
            lock.release()
        released.set()

    holder = threading.Thread(target=give_back_once_asked, daemon=True)
    holder.start()
    assert holding.wait(timeout=10)
    run = conformance("--drivers", "podman,docker-cdi", "--sim", "h100x4", "-n", "2", "-k", "count.max")
    holder.join(timeout=30)
    assert released.is_set()
    assert run.exit_code == 0, run.output[-3000:]
    waits = []
    for driver in ("podman", "docker-cdi"):
        record = run.record(driver, "count.max")
        assert record["verdict"] == "pass", record["reason"]
        # The record is stamped when the cell ends (whole seconds): after the GPUs came back.
        ended = dt.datetime.fromisoformat(record["started_at"]).timestamp()
        assert ended >= int(released_at[0]), (driver, record["started_at"], released_at)
        waits.append(record["timings"]["lease_wait_s"])
    assert max(waits) >= HOLD_S - 0.5, waits
    assert not run.containers()


@pytest.mark.parametrize("driver", ["podman", "docker-cdi"])
def test_cuda_unusable_turns_cuda_init_red_while_smi_stays_green(conformance, driver: str) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers",
        driver,
        "--require-driver",
        driver,
        "--sim",
        "h100x4",
        "--sim-fault",
        "cuda-unusable:0",
        "-k",
        "smi.default or cuda.init or cuda.vectoradd",
    )
    verdicts = run.verdicts(driver)
    assert verdicts["smi.default"] == "pass", run.output[-2000:]
    assert verdicts["cuda.init"] == "fail"
    assert "CUDA failed to initialise" in run.record(driver, "cuda.init")["reason"]
    assert verdicts["cuda.vectoradd"] == "fail", run.record(driver, "cuda.vectoradd")["reason"]


def test_compute_cases_pass_marked_simulated_and_bandwidth_is_skipped(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance("--drivers", "podman", "--sim", "h100x4", "-k", "cuda")
    verdicts = run.verdicts("podman")
    assert {k: v for k, v in verdicts.items() if k != "cuda.bandwidth"} == dict.fromkeys(
        ("cuda.init", "cuda.uuid", "cuda.vectoradd", "cuda.matmul"), "pass"
    ), run.output[-2000:]
    assert verdicts["cuda.bandwidth"] == "skip"
    assert "simulated" in run.record("podman", "cuda.bandwidth")["reason"]
    assert run.record("podman", "cuda.matmul")["parsed"]["simulated"] is True


def test_two_gpu_host_keeps_concurrent_sandboxes_disjoint_and_refuses_a_third(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance("--drivers", "podman", "--sim", "h100x2", "-k", "exclusive or env or release")
    assert run.exit_code == 0, run.output[-3000:]
    assert run.verdicts("podman") == {
        "exclusive.concurrent": "pass",
        "env.escalation": "pass",
        "release": "pass",
    }
    details = run.record("podman", "exclusive.concurrent")["details"]
    assert any("refused" in str(d.get("third", "")) for d in details), details


def test_kubernetes_column_through_the_api_double_catches_an_extra_gpu(conformance) -> None:  # type: ignore[no-untyped-def]
    """The real kubernetes client over HTTP to the double; pods run as Podman containers."""
    healthy = conformance(
        "--drivers",
        "kubernetes",
        "--require-driver",
        "kubernetes",
        "--sim",
        "h100x4",
        "-k",
        "smi or count or device.each or device.invalid",
    )
    assert healthy.exit_code == 0, healthy.output[-3000:]
    verdicts = healthy.verdicts("kubernetes")
    assert verdicts["count.over"] == "rejected"
    assert "Insufficient nvidia.com/gpu" in healthy.record("kubernetes", "count.over")["reason"]
    assert verdicts["device.each"] == "rejected" and verdicts["smi.default"] == "pass"
    assert "+kubedouble" in healthy.record("kubernetes", "smi.default")["versions"].get("kubernetes", "")
    broken = conformance(
        "--drivers",
        "kubernetes",
        "--sim",
        "h100x4",
        "--sim-fault",
        "extra-gpu:0",
        "-k",
        "smi.default or smi.nodes",
    )
    assert broken.verdicts("kubernetes") == {"smi.default": "fail", "smi.nodes": "fail"}, broken.output[
        -3000:
    ]
    assert not healthy.containers() and not broken.containers()


# What the docker-cdi column must show on a healthy simulated h100x4 (SPEC 3: the catalogue that
# applies). Cases added to the catalogue later must at least be pass, rejected or a reasoned skip.
CDI_PASS = [
    *("smi.default", "smi.none", "smi.all", "smi.nodes", "count.1", "count.2", "count.max"),
    *("device.each", "device.uuid", "device.pair", "exclusive.concurrent", "env.escalation", "release"),
    *("cuda.init", "cuda.uuid", "cuda.vectoradd", "cuda.matmul"),
]
CDI_REJECTED = [
    "count.over",
    "count.zero",
    "device.duplicate",
    "device.mismatch",
    "device.empty",
    "device.invalid",
]


def test_both_docker_columns_in_one_run_each_on_its_own_engine_and_path(conformance) -> None:  # type: ignore[no-untyped-def]
    """The whole catalogue on docker-cdi (Engine 26) beside docker-legacy (Engine 20.10), one run."""
    run = conformance(
        "--drivers",
        "docker-legacy,docker-cdi",
        "--require-driver",
        "docker-legacy",
        "--require-driver",
        "docker-cdi",
        "--sim",
        "h100x4",
        timeout=1500,
    )
    assert run.exit_code == 0, run.output[-3000:]
    cdi_verdicts = run.verdicts("docker-cdi")
    assert set(cdi_verdicts) == {c.id for c in CATALOGUE}
    assert {c: cdi_verdicts[c] for c in CDI_PASS} == dict.fromkeys(CDI_PASS, "pass")
    assert {c: cdi_verdicts[c] for c in CDI_REJECTED} == dict.fromkeys(CDI_REJECTED, "rejected")
    assert all(v in GOOD for v in cdi_verdicts.values()), cdi_verdicts
    skipped = [r for r in run.results["records"] if r["driver"] == "docker-cdi" and r["verdict"] == "skip"]
    assert all(r["reason"] for r in skipped), skipped
    assert all(v in GOOD for v in run.verdicts("docker-legacy").values()), run.verdicts("docker-legacy")
    cdi, legacy = run.record("docker-cdi", "smi.default"), run.record("docker-legacy", "smi.default")
    assert cdi["versions"]["engine"].startswith("docker 26.") and cdi["versions"]["gpu_path"] == "cdi"
    assert cdi["versions"]["cdi_spec_file"].endswith(".yaml") and cdi["versions"]["cdi_spec_version"]
    assert (
        legacy["versions"]["engine"].startswith("docker 20.10") and legacy["versions"]["gpu_path"] == "legacy"
    )
    invalid = run.record("docker-cdi", "device.invalid")["reason"]
    assert re.search(r"unresolvable CDI devices \S+=\d+", invalid), invalid  # the engine names the id
    assert "legacy" not in json.dumps(run.record("docker-cdi", "count.2")["versions"]), "silent fallback"


def test_docker_alias_is_the_legacy_column(conformance) -> None:  # type: ignore[no-untyped-def]
    run = conformance(
        "--drivers", "docker", "--require-driver", "docker", "--sim", "h100x2", "-k", "smi.default"
    )
    assert run.verdicts("docker") == {"smi.default": "pass"}, run.output[-2000:]
    assert run.record("docker", "smi.default")["versions"]["gpu_path"] == "legacy"
