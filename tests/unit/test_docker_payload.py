"""The Docker adapter's API payloads, recorded at the HTTP level from a fake Docker Engine.

The adapter runs unchanged (real docker-py, real testcontainers) against a small HTTP server that
answers the calls it makes and records every request; the tests assert the exact
``POST /containers/create`` body for each request shape on both GPU paths. This is the only
place the CDI path (Engine >= 25) runs here: no such engine can be installed on this machine.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from drivers.base import AdapterContext, Deadline, RequestRejected
from drivers.docker import DockerAdapter
from drivers.docker_payload import choose_gpu_path, engine_major, read_multiplexed
from drivers.inventory import SCHEME_LEGACY, GpuRecord, Inventory, default_native_ids
from drivers.leases import GpuLeases
from drivers.request import GpuRequest

KIND = "sim.gpuconform.dev/unit"
CID = "c0ffee" + "0" * 58
OUR_LABELS = {
    "dev.gpuconform.run": "r1",
    "dev.gpuconform.worker": "gw0",
    "dev.gpuconform.owner": "gpuconform",
}
CDI_INFO = {"ServerVersion": "28.2.2", "DefaultRuntime": "runc", "CDISpecDirs": ["/etc/cdi", "/var/run/cdi"]}
LEGACY_INFO = {"ServerVersion": "20.10.24", "DefaultRuntime": "runc"}
GPU_CAPS = [["gpu"]]


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


class FakeEngine:
    """Answers the Engine API calls the adapter makes; ``fail`` maps a call to (status, message)."""

    def __init__(self, engine_version: str, info: dict[str, Any]) -> None:
        self.version = {"Version": engine_version, "ApiVersion": "1.41", "MinAPIVersion": "1.12"}
        self.info = info
        self.calls: list[tuple[str, str, Any]] = []
        self.fail: dict[str, tuple[int, str]] = {}
        self.exec_output = frame(1, b"out\n") + frame(2, b"err\n")
        self.exec_exit = 3
        self.exec_hang = False
        self.listing: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, call: str) -> list[Any]:
        return [body for name, _, body in self.calls if name == call]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = re.sub(r"^/v[0-9.]+", "", self.path.split("?")[0])
                call = f"{method} {re.sub(r'/[0-9a-f]{64}|/exec1', '/ID', path)}"
                engine.calls.append((call, self.path, json.loads(raw) if raw else None))
                if call in engine.fail:
                    status, message = engine.fail[call]
                    return self._reply(status, {"message": message})
                if call == "POST /exec/ID/start":
                    return self._exec_stream()
                answers: dict[str, tuple[int, Any]] = {
                    "GET /version": (200, engine.version),
                    "GET /_ping": (200, "OK"),
                    "GET /info": (200, engine.info),
                    "POST /containers/create": (201, {"Id": CID, "Warnings": []}),
                    "GET /containers/ID/json": (200, {"Id": CID, "Name": "/x", "State": {"Running": True}}),
                    "POST /containers/ID/start": (204, None),
                    "DELETE /containers/ID": (204, None),
                    "POST /containers/ID/exec": (201, {"Id": "exec1"}),
                    "GET /exec/ID/json": (200, {"Running": False, "ExitCode": engine.exec_exit}),
                    "GET /containers/json": (200, engine.listing),
                }
                if call.startswith("GET /images/"):
                    return self._reply(200, {"Id": "sha256:" + "1" * 64, "RepoTags": ["img:1"]})
                if call.startswith("DELETE /containers/"):
                    return self._reply(204)
                status, body = answers.get(call, (404, {"message": f"fake engine: no route {call}"}))
                self._reply(status, body)

            def _exec_stream(self) -> None:
                self.send_response(101)
                self.send_header("Content-Type", "application/vnd.docker.raw-stream")
                self.send_header("Connection", "Upgrade")
                self.send_header("Upgrade", "tcp")
                self.end_headers()
                if engine.exec_hang:
                    time.sleep(3)
                else:
                    self.wfile.write(engine.exec_output)
                self.close_connection = True

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def inventory() -> Inventory:
    gpus = []
    for i in range(4):
        uuid, pci = f"GPU-0000000{i}-1111-2222-3333-444444444444", f"0000:{0x18 + i:02x}:00.0"
        gpus.append(
            GpuRecord(
                i,
                uuid,
                "NVIDIA H100 80GB HBM3",
                pci,
                81559,
                "580.105.08",
                i,
                default_native_ids(i, uuid, pci, KIND),
            )
        )
    return Inventory("unit", tuple(gpus), simulated=True, source="unit", cdi_kind=KIND)


INV = inventory()
UUID2 = INV.gpus[2].uuid


@pytest.fixture(params=["cdi", "legacy"])
def engine(request: pytest.FixtureRequest) -> Iterator[FakeEngine]:
    fake = FakeEngine("28.2.2", CDI_INFO) if request.param == "cdi" else FakeEngine("20.10.24", LEGACY_INFO)
    yield fake
    fake.close()


def adapter_for(engine: FakeEngine, tmp_path: Path, **options: str) -> DockerAdapter:
    ctx = AdapterContext(
        inventory=INV,
        leases=GpuLeases(tmp_path / "leases"),
        run_id="r1",
        worker="gw0",
        options={"docker.host": engine.url, **options},
    )
    return DockerAdapter(ctx)


def provision(adapter: DockerAdapter, req: GpuRequest, env: dict[str, str] | None = None) -> Any:
    return adapter.provision(req, image="img:1", labels=adapter.ctx.labels, deadline=Deadline(30), env=env)


def expected_requests(path: str, ids: list[str]) -> list[dict[str, Any]]:
    if path == "cdi":
        return [{"Driver": "cdi", "Count": 0, "DeviceIDs": ids, "Capabilities": [], "Options": {}}]
    return [{"Driver": "", "Count": 0, "DeviceIDs": ids, "Capabilities": GPU_CAPS, "Options": {}}]


SHAPES = [  # (request, CDI-path ids, legacy-path ids)
    (GpuRequest.default(), [f"{KIND}=0"], ["0"]),
    (GpuRequest.of_count(2), [f"{KIND}=0", f"{KIND}=1"], ["0", "1"]),
    (GpuRequest.of_ids([f"{KIND}=2"]), [f"{KIND}=2"], ["2"]),
    (GpuRequest.of_ids([f"{KIND}={UUID2}"]), [f"{KIND}={UUID2}"], [UUID2]),
    (GpuRequest.of_ids([f"{KIND}=1", f"{KIND}=3"], count=2), [f"{KIND}=1", f"{KIND}=3"], ["1", "3"]),
]


@pytest.mark.parametrize(("req", "cdi_ids", "legacy_ids"), SHAPES, ids=lambda v: getattr(v, "shape", ""))
def test_create_payload_names_exactly_the_chosen_gpus(
    engine: FakeEngine, tmp_path: Path, req: GpuRequest, cdi_ids: list[str], legacy_ids: list[str]
) -> None:
    adapter = adapter_for(engine, tmp_path)
    path = "cdi" if "CDISpecDirs" in engine.info else "legacy"
    sandbox = provision(adapter, req)
    try:
        (body,) = engine.bodies("POST /containers/create")
        ids = cdi_ids if path == "cdi" else legacy_ids
        assert body["HostConfig"]["DeviceRequests"] == expected_requests(path, ids)
        assert body["Cmd"] == ["sleep", "2147483647"]
        assert body["HostConfig"]["NetworkMode"] == "none"
        assert {k: v for k, v in body["Labels"].items() if k.startswith("dev.gpuconform")} == OUR_LABELS
        assert sandbox.versions["gpu_path"] == path
        assert adapter.profile.notes.startswith(f"gpu path: {path};")
        assert sandbox.granted == frozenset(INV.resolve(SCHEME_LEGACY, i).uuid for i in legacy_ids)  # type: ignore[union-attr]
    finally:
        sandbox.close()
    assert [name for name, _, _ in engine.calls if name.startswith("DELETE")] == ["DELETE /containers/ID"]


def test_all_form_on_each_path(engine: FakeEngine, tmp_path: Path) -> None:
    path = "cdi" if "CDISpecDirs" in engine.info else "legacy"
    with provision(adapter_for(engine, tmp_path), GpuRequest.of_ids([INV.cdi_all])) as sandbox:
        assert sandbox.granted == INV.uuids
    (body,) = engine.bodies("POST /containers/create")
    expected = (
        expected_requests("cdi", [INV.cdi_all])
        if path == "cdi"
        else [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": GPU_CAPS, "Options": {}}]
    )
    assert body["HostConfig"]["DeviceRequests"] == expected


def test_no_gpu_request_has_no_device_requests_and_passes_env(engine: FakeEngine, tmp_path: Path) -> None:
    adapter = adapter_for(engine, tmp_path)
    with provision(adapter, GpuRequest.none(), env={"NVIDIA_VISIBLE_DEVICES": "all"}) as sb:
        assert sb.granted == frozenset()
    (body,) = engine.bodies("POST /containers/create")
    assert body["HostConfig"]["DeviceRequests"] == []
    assert body["Env"] == ["NVIDIA_VISIBLE_DEVICES=all"]


def test_count_over_is_rejected_before_any_create(engine: FakeEngine, tmp_path: Path) -> None:
    with pytest.raises(RequestRejected, match="requested 5 GPUs but the host has 4"):
        provision(adapter_for(engine, tmp_path), GpuRequest.of_count(5))
    assert not [c for c in engine.calls if c[0].startswith("POST /containers")]


def test_forced_path_overrides_what_the_engine_reports(engine: FakeEngine, tmp_path: Path) -> None:
    with provision(adapter_for(engine, tmp_path, **{"docker.gpu_path": "legacy"}), GpuRequest.default()):
        pass
    (body,) = engine.bodies("POST /containers/create")
    assert body["HostConfig"]["DeviceRequests"] == expected_requests("legacy", ["0"])


def test_cdi_unknown_device_refused_by_engine_is_rejected_with_its_message(tmp_path: Path) -> None:
    engine = FakeEngine("28.2.2", CDI_INFO)
    message = f"CDI device injection failed: unresolvable CDI devices {KIND}=9"
    engine.fail["POST /containers/create"] = (500, message)
    adapter = adapter_for(engine, tmp_path)
    try:
        with pytest.raises(RequestRejected) as caught:
            provision(adapter, GpuRequest.of_ids([f"{KIND}=9"]))
        assert message in str(caught.value)
        (body,) = engine.bodies("POST /containers/create")
        assert body["HostConfig"]["DeviceRequests"] == expected_requests("cdi", [f"{KIND}=9"])
        engine.fail.clear()
        with provision(adapter, GpuRequest.of_count(4)):  # nothing stayed leased
            pass
    finally:
        engine.close()


def test_legacy_hook_refusal_at_start_is_rejected_and_the_container_removed(tmp_path: Path) -> None:
    engine = FakeEngine("20.10.24", LEGACY_INFO)
    message = (
        "failed to create shim task: OCI runtime create failed: error running hook #0: exit status 1, "
        "stderr: nvidia-container-cli: device error: 2: unknown device: unknown"
    )
    engine.fail["POST /containers/ID/start"] = (500, message)
    try:
        with pytest.raises(RequestRejected, match="device error: 2: unknown device"):
            provision(adapter_for(engine, tmp_path), GpuRequest.of_ids([f"{KIND}=2"]))
        assert "DELETE /containers/ID" in [name for name, _, _ in engine.calls]
    finally:
        engine.close()


def test_legacy_unknown_id_is_rejected_naming_it_before_any_create(tmp_path: Path) -> None:
    engine = FakeEngine("20.10.24", LEGACY_INFO)
    try:
        with pytest.raises(RequestRejected, match=re.escape(f"'{KIND}=9'")):
            provision(adapter_for(engine, tmp_path), GpuRequest.of_ids([f"{KIND}=9"]))
        assert not engine.bodies("POST /containers/create")
    finally:
        engine.close()


def test_exec_drains_both_streams_and_reports_the_exit_code(engine: FakeEngine, tmp_path: Path) -> None:
    with provision(adapter_for(engine, tmp_path), GpuRequest.default()) as sandbox:
        result = sandbox.exec(["sh", "-c", "x"], timeout=10)
        seen = (result.exit_code, result.stdout, result.stderr, result.timed_out)
        assert seen == (3, "out\n", "err\n", False)
        assert engine.bodies("POST /containers/ID/exec")[0]["Cmd"] == ["sh", "-c", "x"]
        engine.exec_hang = True
        start = time.monotonic()
        late = sandbox.exec(["sleep", "100"], timeout=0.5)
        assert late.timed_out and late.exit_code is None
        assert time.monotonic() - start < 2


def test_gc_removes_every_labelled_container(engine: FakeEngine, tmp_path: Path) -> None:
    engine.listing = [{"Id": "a" * 64, "Names": ["/gpuconform-r1-aaa"]}, {"Id": "b" * 64, "Names": ["/old"]}]
    assert adapter_for(engine, tmp_path).gc("r1") == ["gpuconform-r1-aaa", "old"]
    (query,) = [raw for name, raw, _ in engine.calls if name == "GET /containers/json"]
    assert "dev.gpuconform.run%3Dr1" in query
    assert len([name for name, _, _ in engine.calls if name == "DELETE /containers/ID"]) == 2


def test_unreachable_engine_is_unavailable_within_seconds(tmp_path: Path) -> None:
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for url in (f"tcp://127.0.0.1:{silent.getsockname()[1]}", f"unix://{tmp_path}/missing.sock"):
            ctx = AdapterContext(
                inventory=INV, leases=GpuLeases(tmp_path), run_id="r1", options={"docker.host": url}
            )
            start = time.monotonic()
            availability = DockerAdapter(ctx).available()
            assert not availability.ok
            assert availability.reason.startswith(f"docker engine not reachable at {url}: ")
            assert time.monotonic() - start < 8
    finally:
        silent.close()


@pytest.mark.parametrize(
    ("version", "info", "override", "path"),
    [
        ("20.10.24+dfsg1", {}, None, "legacy"),
        ("25.0.3", {}, None, "legacy"),  # CDI off
        ("25.0.3", {"CDISpecDirs": ["/etc/cdi"]}, None, "cdi"),
        ("28.2.2", {"CDISpecDirs": ["/etc/cdi", "/var/run/cdi"]}, None, "cdi"),
        ("28.2.2", {"CDISpecDirs": ["/etc/cdi"]}, "legacy", "legacy"),
    ],
)
def test_gpu_path_choice(version: str, info: dict[str, Any], override: str | None, path: str) -> None:
    assert choose_gpu_path({"Version": version}, info, override)[0] == path


def test_engine_major_reads_debian_and_upstream_versions() -> None:
    assert (engine_major("20.10.24+dfsg1"), engine_major("28.2.2"), engine_major("dev")) == (20, 28, None)


def test_read_multiplexed_keeps_stdout_and_stderr_apart() -> None:
    left, right = socket.socketpair()
    left.sendall(frame(1, b"a") + frame(2, b"b") + frame(1, b"c"))
    left.close()
    assert read_multiplexed(right, Deadline(5)) == ("ac", "b", False)


def test_profile_names_its_path_even_without_an_engine(tmp_path: Path) -> None:
    def profile(**options: str) -> str:
        ctx = AdapterContext(
            inventory=INV,
            leases=GpuLeases(tmp_path),
            run_id="r1",
            options={"docker.host": f"unix://{tmp_path}/missing.sock", **options},
        )
        return DockerAdapter(ctx).profile.notes

    assert profile(**{"docker.gpu_path": "cdi"}).startswith("gpu path: cdi;")
    assert profile().startswith("gpu path: unknown (engine not reachable);")
