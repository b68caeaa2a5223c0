"""What the Docker columns do on engines this machine cannot run, against a fake Docker Engine.

Both paths run for real elsewhere: ``docker-cdi`` on Engine 26 (tests/integration/test_docker_cdi.py)
and ``docker-legacy`` on Engine 20.10 (test_docker_legacy.py), request shapes, ``=all``, refusals,
exec and gc included. What stays here is what no reachable engine shows: Engine 28's defaults
(CDI on without configuration, ``DiscoveredDevices`` in ``/info``), the availability judgement of
each column on engines and hosts we do not have (CDI off, no hook, the nvidia runtime, a remote
engine), and an engine that accepts connections but never answers. The adapter runs unchanged
(real docker-py, real testcontainers) against a small HTTP server that records every request.
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

from gpuconform.drivers.base import AdapterContext, Deadline, DriverUnavailable
from gpuconform.drivers.docker import DockerAdapter, DockerCdiAdapter, DockerLegacyAdapter
from gpuconform.drivers.docker_payload import (
    cdi_spec_for_kind,
    column_option,
    engine_major,
    engine_url,
    path_support,
    read_multiplexed,
)
from gpuconform.drivers.inventory import GpuRecord, Inventory, default_native_ids
from gpuconform.drivers.leases import GpuLeases
from gpuconform.drivers.request import GpuRequest

KIND = "sim.gpuconform.dev/unit"
CID = "c0ffee" + "0" * 58
OUR_LABELS = {
    "dev.gpuconform.run": "r1",
    "dev.gpuconform.worker": "gw0",
    "dev.gpuconform.owner": "gpuconform",
    "dev.gpuconform.host": "runner-7",
}
# Engine 28.2: CDI on by default, its devices listed in /info (API 1.48).
ENGINE28_INFO = {
    "ServerVersion": "28.2.2",
    "DefaultRuntime": "runc",
    "CDISpecDirs": ["/etc/cdi", "/var/run/cdi"],
    "DiscoveredDevices": [{"Source": "cdi", "ID": f"{KIND}={i}"} for i in range(4)]
    + [{"Source": "cdi", "ID": f"{KIND}=all"}],
}
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


def adapter_for(
    engine: FakeEngine, tmp_path: Path, cls: type[DockerAdapter] = DockerCdiAdapter, **options: str
) -> DockerAdapter:
    ctx = AdapterContext(
        inventory=INV,
        leases=GpuLeases(tmp_path / "leases"),
        run_id="r1",
        worker="gw0",
        options={"docker.host": engine.url, **options},
        host="runner-7",
    )
    return cls(ctx)


def provision(adapter: DockerAdapter, req: GpuRequest) -> Any:
    return adapter.provision(req, image="img:1", labels=adapter.ctx.labels, deadline=Deadline(30))


@pytest.fixture
def engine28() -> Iterator[FakeEngine]:
    fake = FakeEngine("28.2.2", ENGINE28_INFO)
    yield fake
    fake.close()


def test_engine_28_cdi_column_is_available_from_its_listed_devices(
    engine28: FakeEngine, tmp_path: Path
) -> None:
    """Engine 28 needs no daemon.json: CDI is on, and /info lists the devices it resolves."""
    availability = adapter_for(engine28, tmp_path).available()
    assert availability.ok, availability.reason
    assert availability.versions["gpu_path"] == "cdi"
    assert availability.versions["cdi_devices"].startswith(f"{KIND}=0,")
    assert availability.versions["cdi_spec_file"] == "(listed by the engine)"


@pytest.mark.parametrize(
    ("req", "ids"),
    [
        (GpuRequest.default(), [f"{KIND}=0"]),
        (GpuRequest.of_count(2), [f"{KIND}=0", f"{KIND}=1"]),
        (GpuRequest.of_ids([f"{KIND}={UUID2}"]), [f"{KIND}={UUID2}"]),
        (GpuRequest.of_ids([INV.cdi_all]), [INV.cdi_all]),
    ],
    ids=["default", "count.2", "uuid", "all"],
)
def test_engine_28_create_payload_is_a_cdi_device_request(
    engine28: FakeEngine, tmp_path: Path, req: GpuRequest, ids: list[str]
) -> None:
    with provision(adapter_for(engine28, tmp_path), req) as sandbox:
        assert sandbox.driver == "docker-cdi"
    (body,) = engine28.bodies("POST /containers/create")
    expected = [{"Driver": "cdi", "Count": 0, "DeviceIDs": ids, "Capabilities": [], "Options": {}}]
    assert body["HostConfig"]["DeviceRequests"] == expected
    assert {k: v for k, v in body["Labels"].items() if k.startswith("dev.gpuconform")} == OUR_LABELS


def test_engine_28_without_our_kind_leaves_the_cdi_column_unavailable(tmp_path: Path) -> None:
    info = {**ENGINE28_INFO, "DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=0"}]}
    engine = FakeEngine("28.2.2", info)
    try:
        availability = adapter_for(engine, tmp_path).available()
        assert not availability.ok
        assert f"no CDI spec of kind {KIND}" in availability.reason
        with pytest.raises(DriverUnavailable):  # never provisioned on another path
            provision(adapter_for(engine, tmp_path), GpuRequest.default())
        assert not engine.bodies("POST /containers/create")
    finally:
        engine.close()


def test_legacy_column_on_engine_28_takes_the_hook_path_not_cdi(engine28: FakeEngine, tmp_path: Path) -> None:
    """The column fixes the path: an engine with CDI on still gets --gpus-style requests."""
    adapter = adapter_for(engine28, tmp_path, DockerLegacyAdapter, **{"docker.legacy_hook": "/usr/bin/hook"})
    with provision(adapter, GpuRequest.of_ids([f"{KIND}=2"])) as sandbox:
        assert sandbox.versions["gpu_path"] == "legacy"
    (body,) = engine28.bodies("POST /containers/create")
    assert body["HostConfig"]["DeviceRequests"] == [
        {"Driver": "", "Count": 0, "DeviceIDs": ["2"], "Capabilities": GPU_CAPS, "Options": {}}
    ]


@pytest.mark.parametrize(
    ("path", "version", "info", "hook", "ok", "why"),
    [
        ("cdi", "20.10.24+dfsg1", {}, None, False, "predates CDI"),
        ("cdi", "25.0.3", {}, None, False, "CDI disabled"),
        ("cdi", "25.0.3", {"CDISpecDirs": ["/etc/cdi"]}, None, True, "CDI spec dirs /etc/cdi"),
        ("cdi", "28.2.2", {"CDISpecDirs": ["/etc/cdi"]}, None, True, "with CDI spec dirs"),
        ("legacy", "20.10.24", {}, None, False, "neither nvidia-container-runtime-hook"),
        ("legacy", "20.10.24", {}, "/x/hook", True, "at /x/hook"),
        ("legacy", "28.2.2", {"Runtimes": {"runc": {}, "nvidia": {}}}, None, True, "nvidia runtime"),
    ],
)
def test_each_path_needs_what_its_engine_must_have(
    path: str, version: str, info: dict[str, Any], hook: str | None, ok: bool, why: str
) -> None:
    got_ok, got_why = path_support(path, {"Version": version}, info, hook=hook)
    assert (got_ok, why in got_why) == (ok, True), got_why


def test_cdi_spec_for_kind_reads_the_spec_dirs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "other.yaml").write_text('cdiVersion: "0.6.0"\nkind: vendor.example/gpu\ndevices: []\n')
    (tmp_path / "a" / "ours.json").write_text(
        json.dumps({"cdiVersion": "0.5.0", "kind": KIND, "devices": []})
    )
    (tmp_path / "a" / "notes.txt").write_text(f"kind: {KIND}\n")
    assert cdi_spec_for_kind([str(tmp_path / "missing"), str(tmp_path / "a")], KIND) == (
        str(tmp_path / "a" / "ours.json"),
        "0.5.0",
    )
    assert cdi_spec_for_kind([str(tmp_path / "a")], "nvidia.com/gpu") is None


def test_columns_read_their_own_options_before_the_shared_ones() -> None:
    options = {"docker.host": "unix:///shared.sock", "docker-cdi.host": "unix:///cdi.sock"}
    assert engine_url(options, "docker-cdi") == "unix:///cdi.sock"
    assert engine_url(options, "docker-legacy") == "unix:///shared.sock"
    assert column_option({"docker-legacy.legacy_hook": "/h"}, "docker", "legacy_hook") == "/h"  # the alias


def test_the_gone_gpu_path_option_is_a_reasoned_skip_not_a_switch(
    engine28: FakeEngine, tmp_path: Path
) -> None:
    options = {"docker.gpu_path": "legacy"}
    availability = adapter_for(engine28, tmp_path, DockerCdiAdapter, **options).available()
    assert not availability.ok
    assert "the column fixes the path" in availability.reason


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
            availability = DockerCdiAdapter(ctx).available()
            assert not availability.ok
            assert availability.reason.startswith(f"docker engine not reachable at {url}: ")
            assert time.monotonic() - start < 8
    finally:
        silent.close()


def test_engine_major_reads_debian_and_upstream_versions() -> None:
    assert (engine_major("20.10.24+dfsg1"), engine_major("28.2.2"), engine_major("dev")) == (20, 28, None)


def test_read_multiplexed_keeps_stdout_and_stderr_apart() -> None:
    left, right = socket.socketpair()
    left.sendall(frame(1, b"a") + frame(2, b"b") + frame(1, b"c"))
    left.close()
    assert read_multiplexed(right, Deadline(5)) == ("ac", "b", False)


def test_profile_names_its_column_and_path_without_an_engine(tmp_path: Path) -> None:
    ctx = AdapterContext(inventory=INV, leases=GpuLeases(tmp_path), run_id="r1", options={})
    for cls, column, path in (
        (DockerCdiAdapter, "docker-cdi", "cdi"),
        (DockerLegacyAdapter, "docker-legacy", "legacy"),
        (DockerAdapter, "docker", "legacy"),
    ):
        profile = cls(ctx).profile
        assert (profile.driver, profile.notes.split(";")[0]) == (column, f"gpu path: {path}")
