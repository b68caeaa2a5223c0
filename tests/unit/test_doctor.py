"""gpuconform doctor against a simulated host: passes as built, names exactly the tampered problem.

Each test brings up its own simulated instance in a temporary base and CDI directory, edits its
spec the way a stale or broken real spec differs, and checks the one line doctor blames.
Needs root (the simulated host creates device nodes with mknod).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuconform.conformance.cli import main
from gpuconform.conformance.doctor import DoctorOptions, DoctorReport, Status, run_doctor
from gpuconform.conformance.doctor.engines import PODMAN_CDI_MAX, cdi_max_for, engine_lines
from gpuconform.fixtures.sim.simgpu import cdi
from gpuconform.fixtures.sim.simgpu.host import SimHost

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes (mknod) needs root")

Spec = dict[str, Any]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimHost]:
    base, cdi_dir = tmp_path / "sim", tmp_path / "cdi"
    cdi_dir.mkdir()
    host = SimHost.up("h100x4", instance="doc", base=base, cdi_dir=cdi_dir, owner_pid=os.getpid())
    yield host
    host.down()


def doctor(sim: SimHost, *drivers: str) -> DoctorReport:
    return run_doctor(
        DoctorOptions(
            drivers=drivers or ("podman",),
            sim_instance=sim.instance,
            sim_base=sim.root.parent,
            cdi_dirs=(sim.cdi_spec_path.parent,),
        )
    )


def tamper(sim: SimHost, edit: Callable[[Spec], None]) -> None:
    spec = yaml.safe_load(sim.cdi_spec_path.read_text())
    edit(spec)
    sim.cdi_spec_path.write_text(cdi.render(spec))


def problems(report: DoctorReport) -> list[str]:
    return [f"{c.status.value} {c.what}: {c.detail}" for d in report.drivers for c in d.problems]


def device(spec: Spec, name: str) -> Spec:
    return next(d for d in spec["devices"] if d["name"] == name)


def test_doctor_passes_on_the_simulated_host_as_built(sim: SimHost) -> None:
    report = doctor(sim, "podman", "docker", "kubernetes", "qemu", "host")
    assert problems(report) == []
    assert report.exit_code == 0
    lines = {c.what: c for c in report.drivers[0].checks}
    assert lines["CDI names"].status == Status.OK
    assert "every inventory GPU resolves" in lines["CDI names"].detail
    assert "index, uuid" in lines["CDI naming"].detail
    assert "doctor: ready [simulated GPU host" in report.render()


def test_a_node_path_that_does_not_exist_is_named(sim: SimHost) -> None:
    gone = str(sim.root / "gone" / "nvidia1")
    tamper(sim, lambda s: device(s, "1")["containerEdits"]["deviceNodes"][0].update(hostPath=gone))
    report = doctor(sim)
    assert report.exit_code == 1
    assert problems(report) == [
        f"wrong CDI paths {sim.cdi_spec_path.name}: node {gone} does not exist on the host (used by 1)"
    ]


def test_a_stale_driver_version_is_named(sim: SimHost, tmp_path: Path) -> None:
    stale = tmp_path / "libcuda.so.550.54.15"
    stale.write_bytes(b"")  # present, so the only problem is its version
    mount = {
        "hostPath": str(stale),
        "containerPath": "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
        "options": ["ro", "bind"],
    }
    tamper(sim, lambda s: s["containerEdits"]["mounts"].append(mount))
    report = doctor(sim)
    assert report.exit_code == 1
    [line] = problems(report)
    assert line.startswith(
        f"wrong driver libraries {sim.cdi_spec_path.name}: the spec mounts driver 550.54.15"
    )
    assert "but the host driver is 580.105.08: the spec is stale" in line


def test_a_driver_library_of_the_host_version_is_ok(sim: SimHost, tmp_path: Path) -> None:
    lib = tmp_path / "libnvidia-ml.so.580.105.08"
    lib.write_bytes(b"")
    mount = {"hostPath": str(lib), "containerPath": "/usr/lib/libnvidia-ml.so.580.105.08", "options": ["ro"]}
    tamper(sim, lambda s: s["containerEdits"]["mounts"].append(mount))
    report = doctor(sim)
    assert report.exit_code == 0
    assert any(
        c.what.startswith("driver libraries") and c.status == Status.OK for c in report.drivers[0].checks
    )


def test_a_cdi_version_the_engine_does_not_read_is_named(sim: SimHost) -> None:
    tamper(sim, lambda s: s.update(cdiVersion="0.6.0"))  # Podman 4.3's CDI library reads <= 0.5.0
    report = doctor(sim, "podman")
    assert report.exit_code == 1
    [line] = problems(report)
    assert line.startswith(f"wrong cdiVersion {sim.cdi_spec_path.name}: 0.6.0 is newer than podman ")
    assert "CDI library reads (<= 0.5.0): every device of this spec is unresolvable" in line


def test_a_gpu_no_name_resolves_is_named(sim: SimHost) -> None:
    lost = sim.inventory.gpus[2]
    tamper(sim, lambda s: s.update(devices=[d for d in s["devices"] if d["name"] not in ("2", lost.uuid)]))
    report = doctor(sim)
    assert report.exit_code == 1
    assert problems(report) == [
        f"wrong CDI GPU 2: {lost.uuid} ({lost.pci_bus_id}) is resolvable by no name of {sim.cdi_kind}"
    ]


def test_a_spec_without_uuid_names_is_a_note_and_exit_0(sim: SimHost) -> None:
    uuids = {g.uuid for g in sim.inventory.gpus}
    tamper(sim, lambda s: s.update(devices=[d for d in s["devices"] if d["name"] not in uuids]))
    report = doctor(sim)
    assert report.exit_code == 0
    notes = [c for c in report.drivers[0].checks if c.what == "CDI UUID names"]
    assert [(c.status, c.detail) for c in notes] == [
        (Status.NOTE, "the spec has no UUID names: device.uuid will be unsupported")
    ]


def test_two_specs_declaring_one_kind_are_named(sim: SimHost) -> None:
    twin = sim.cdi_spec_path.with_name("copy.yaml")
    twin.write_text(sim.cdi_spec_path.read_text())
    report = doctor(sim)
    assert report.exit_code == 1
    assert problems(report) == [
        f"wrong CDI kind: 2 specs declare {sim.cdi_kind}: {twin}, {sim.cdi_spec_path}"
    ]


def test_cli_doctor_brings_a_simulated_host_up_and_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["doctor", "--sim", "h100x4", "--drivers", "podman", "--json", "--cdi-dir", str(tmp_path)])
    doc = json.loads(capsys.readouterr().out)
    assert (code, doc["ready"], doc["simulated"], doc["facts"]["gpus"]) == (0, True, True, 4)
    assert doc["drivers"]["podman"]["ready"]
    assert {c["status"] for c in doc["drivers"]["podman"]["checks"]} <= {"ok", "note"}
    assert list(tmp_path.iterdir()) == []  # the spec it wrote is gone again
    assert SimHost.find(f"doctor{os.getpid()}") is None


def test_cli_doctor_exits_1_naming_the_problem(sim: SimHost, capsys: pytest.CaptureFixture[str]) -> None:
    tamper(sim, lambda s: s.update(cdiVersion="0.6.0"))
    report = doctor(sim)
    text = report.render()
    assert "podman: NOT READY" in text
    assert "doctor: NOT READY: podman" in text
    assert "(hint: generate the spec with --spec-version 0.5.0, or upgrade the engine)" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--drivers", "dokcer"], "gpuconform: error: unknown driver 'dokcer' (hint: one of "),
        (["--sim-instance", "nosuchone"], "gpuconform: error: no simulated host named 'nosuchone' is up"),
    ],
)
def test_cli_doctor_bad_input_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message)
    assert len(captured.err.splitlines()) == 1


def test_podman_cdi_limits_follow_the_vendored_library() -> None:
    assert cdi_max_for(PODMAN_CDI_MAX, "4.3.1") == "0.5.0"
    assert cdi_max_for(PODMAN_CDI_MAX, "5.4.0") == "0.8.0"
    assert cdi_max_for(PODMAN_CDI_MAX, "3.4.4") is None


@pytest.mark.parametrize(
    ("column", "info", "hook", "blocking"),
    [
        ("docker-cdi", {"CDISpecDirs": ["/etc/cdi"]}, None, []),
        ("docker-cdi", {}, "/usr/bin/nvidia-container-runtime-hook", ["docker CDI"]),
        ("docker-legacy", {}, None, ["docker legacy hook"]),
        ("docker-legacy", {"Runtimes": {"nvidia": {}}}, None, []),
        ("docker", {}, "/usr/bin/nvidia-container-runtime-hook", []),
    ],
)
def test_docker_column_needs_its_own_gpu_path(
    column: str, info: dict[str, Any], hook: str | None, blocking: list[str]
) -> None:
    from gpuconform.conformance.doctor.engines import docker_path

    checks, engine = engine_lines(
        {"Version": "26.1.5", "ApiVersion": "1.45"}, info, docker_path(column), hook
    )
    assert [c.what for c in checks if c.status.blocking] == blocking
    assert engine.cdi_max == ("0.6.0" if info.get("CDISpecDirs") else None)


def test_after_a_run_an_unavailable_driver_gets_doctors_missing_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpuconform.conformance.doctor.hints import unavailable_hints

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"drivers": {"podman": {"available": False, "reason": "podman not on PATH"},
                                               "host": {"available": True}}}))  # fmt: skip
    (tmp_path / "cdi").mkdir()
    host = SimHost.up(
        "h100x4", instance=f"hint{os.getpid()}", cdi_dir=tmp_path / "cdi", owner_pid=os.getpid()
    )
    try:
        monkeypatch.setenv("PATH", str(tmp_path))  # no podman here
        lines = unavailable_hints(results, sim_instance=host.instance)
    finally:
        host.down()
    assert lines == [
        "gpuconform doctor on the unavailable driver(s) podman:",
        "  podman: missing podman: podman is not on PATH (hint: apt-get install podman)",
    ]
    results.write_text(json.dumps({"drivers": {"podman": {"available": True}}}))
    assert unavailable_hints(results) == []


CORPUS_SPEC = Path(__file__).resolve().parents[1] / "corpus" / "cdi" / "nvidia-ctk-generate-index.yaml"


@pytest.mark.parametrize(("host_driver", "status"), [("999.88.77", Status.OK), ("580.105.08", Status.WRONG)])
def test_driver_libraries_of_a_generated_spec_against_the_host_driver(
    tmp_path: Path, host_driver: str, status: Status
) -> None:
    """nvidia-ctk's own output (tests/corpus, with its source) mounts libcuda.so.999.88.77."""
    from gpuconform.conformance.doctor.cdi_lint import lint_specs
    from gpuconform.drivers.inventory import Inventory, records_from_query

    (tmp_path / "nvidia.yaml").write_text(CORPUS_SPEC.read_text())
    row = {"index": 0, "uuid": "GPU-00000000-0000-4000-8000-000000000000", "name": "NVIDIA H100",
           "pci.bus_id": "00000000:18:00.0", "memory.total": 81559, "driver_version": host_driver,
           "minor_number": 0}  # fmt: skip
    inventory = Inventory(
        "gpu-a", records_from_query([row], "example.com/device"), False, "test", "example.com/device"
    )
    libs = [c for c in lint_specs([tmp_path], inventory, None) if c.what == "driver libraries nvidia.yaml"]
    assert [c.status for c in libs] == [status]
    if status == Status.WRONG:
        assert (
            "mounts driver 999.88.77 (libcuda.so.999.88.77) but the host driver is 580.105.08"
            in libs[0].detail
        )


def test_a_spec_the_reader_cannot_read_is_named_with_the_readers_reason(sim: SimHost) -> None:
    tamper(sim, lambda s: s.update(cdiVersion="0.9.0"))  # no CDI library reads it
    report = doctor(sim)
    assert report.exit_code == 1
    name, folder = sim.cdi_spec_path.name, sim.cdi_spec_path.parent
    lines = problems(report)
    assert lines[0].startswith(f"missing CDI spec: no readable spec in {folder} declares kind")
    unreadable = f"wrong CDI spec {name}: unreadable: cdiVersion '0.9.0' is not one gpuconform reads"
    assert lines[1].startswith(unreadable)
    assert len(lines) == 2


def test_after_a_run_a_doctor_that_cannot_start_gives_one_line_not_an_error(tmp_path: Path) -> None:
    from gpuconform.conformance.doctor.hints import unavailable_hints

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"drivers": {"podman": {"available": False}}}))
    assert unavailable_hints(results, sim_instance="nosuchinstance") == [
        "gpuconform doctor could not check podman: no simulated host named 'nosuchinstance' is up "
        "(hint: gpuconform sim up --name nosuchinstance)"
    ]
