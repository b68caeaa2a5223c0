"""gpuconform.drivers.ssh against a real paramiko SSH server on loopback (no VM needed).

The server's commands are chosen to break naive clients: megabytes on stdout and stderr
interleaved (a client reading one stream to the end deadlocks once the channel window fills
with the other), a command that never exits, and a server presenting another host key.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import paramiko
import pytest
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from gpuconform.drivers.base import Deadline, DeadlineExceeded
from gpuconform.drivers.ssh import HostKeyMismatch, SshError, SshKeys, SshSession, generate_keys, public_key

BIG = 5 * 512 * 1024  # 2.5 MiB per stream: beyond paramiko's 2 MiB channel window
BLOCK = 32 * 1024
BIG_EXIT = 42


def _payload(stream: str, size: int) -> bytes:
    seed = hashlib.sha256(stream.encode()).hexdigest().encode() + b"\n"  # text: results are decoded
    return (seed * (size // len(seed) + 1))[:size]


REPLY_GRACE_S = 0.2


class _Server(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey, received: dict[str, bytes]) -> None:
        self.client_key = client_key
        self.received = received

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "root" and key.get_base64() == self.client_key.get_base64()
        return AUTH_SUCCESSFUL if ok else AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return OPEN_SUCCEEDED if kind == "session" else OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        # paramiko sends the channel-success reply only after this returns. A real sshd replies
        # before it runs the command; starting at once could close the channel before the reply
        # (the client then sees "Channel closed"), so the command waits for its cue.
        threading.Timer(REPLY_GRACE_S, self._run, args=(channel, command.decode())).start()
        return True

    def _run(self, chan: paramiko.Channel, command: str) -> None:
        try:
            if command == "big":
                out, err = _payload("out", BIG), _payload("err", BIG)
                for offset in range(0, BIG, BLOCK):
                    chan.sendall(out[offset : offset + BLOCK])
                    chan.sendall_stderr(err[offset : offset + BLOCK])
                chan.send_exit_status(BIG_EXIT)
            elif command == "hang":
                time.sleep(30)
                return
            elif command.startswith("sh -c "):  # put_file's cat: collect stdin until EOF
                data = bytearray()
                while chunk := chan.recv(BLOCK):
                    data += chunk
                self.received[command] = bytes(data)
                chan.send_exit_status(0)
            else:
                chan.sendall_stderr(f"unknown command {command}\n".encode())
                chan.send_exit_status(127)
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            if command != "hang":
                chan.close()


@dataclass
class _Listener:
    port: int
    received: dict[str, bytes] = field(default_factory=dict)
    transports: list[paramiko.Transport] = field(default_factory=list)


def _serve(host_key: paramiko.PKey, keys: SshKeys, delay: float = 0.0) -> Iterator[_Listener]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    listener = _Listener(sock.getsockname()[1])
    stop = threading.Event()

    def accept() -> None:
        time.sleep(delay)  # a guest still booting: nothing listens yet
        sock.listen(8)
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            listener.transports.append(transport)
            try:
                transport.start_server(server=_Server(keys.client_key, listener.received))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(5)
        for transport in listener.transports:
            transport.close()
        sock.close()


@pytest.fixture
def keys() -> SshKeys:
    return generate_keys()


@pytest.fixture
def server(keys: SshKeys) -> Iterator[_Listener]:
    yield from _serve(keys.host_key, keys)


@pytest.fixture
def session(server: _Listener, keys: SshKeys) -> Iterator[SshSession]:
    sess = SshSession.connect("127.0.0.1", server.port, username="root", keys=keys, deadline=Deadline(10))
    yield sess
    sess.close()


def test_exec_drains_megabytes_of_interleaved_stdout_and_stderr_and_returns_the_exit_code(
    session: SshSession,
) -> None:
    result = session.exec(["big"], timeout=60)
    assert not result.timed_out
    assert result.exit_code == BIG_EXIT
    assert result.stdout.encode() == _payload("out", BIG)
    assert result.stderr.encode() == _payload("err", BIG)


def test_exec_of_a_command_that_never_exits_times_out_at_its_deadline(session: SshSession) -> None:
    start = time.monotonic()
    result = session.exec(["hang"], timeout=1.5)
    elapsed = time.monotonic() - start
    assert result.timed_out
    assert result.exit_code is None
    assert 1.4 <= elapsed < 4.0
    assert session.exec(["big"], timeout=60).exit_code == BIG_EXIT  # the connection still works


def test_exec_quotes_argv_for_the_remote_shell(session: SshSession) -> None:
    result = session.exec(["no such", "it's"], timeout=10)
    assert result.exit_code == 127
    assert "unknown command 'no such' 'it'\"'\"'s'" in result.stderr


def test_put_file_streams_the_data_on_stdin(session: SshSession, server: _Listener) -> None:
    data = bytes(range(256)) * 1000
    session.put_file("/tmp/gpuconform/probe.py", data, 0o644)
    [(command, got)] = server.received.items()
    assert got == data
    assert "/tmp/gpuconform/probe.py" in command and " 644" in command


def test_connecting_to_a_server_with_another_host_key_is_refused_at_once(keys: SshKeys) -> None:
    impostor = generate_keys().host_key
    for listener in _serve(impostor, keys):
        start = time.monotonic()
        with pytest.raises(HostKeyMismatch, match="refusing it"):
            SshSession.connect("127.0.0.1", listener.port, username="root", keys=keys, deadline=Deadline(20))
        assert time.monotonic() - start < 10  # refused, not retried until the deadline


def test_connect_retries_until_a_late_server_comes_up(keys: SshKeys) -> None:
    for listener in _serve(keys.host_key, keys, delay=1.0):
        sess = SshSession.connect(
            "127.0.0.1", listener.port, username="root", keys=keys, deadline=Deadline(15)
        )
        try:
            assert sess.exec(["big"], timeout=60).exit_code == BIG_EXIT
        finally:
            sess.close()


def test_connect_gives_up_at_the_deadline_when_nothing_answers(keys: SshKeys) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(DeadlineExceeded, match="not up within"):
        SshSession.connect("127.0.0.1", port, username="root", keys=keys, deadline=Deadline(1.0))


def test_connect_stops_waiting_when_the_vm_is_gone(keys: SshKeys) -> None:
    with pytest.raises(SshError, match="QEMU exited with 1"):
        SshSession.connect(
            "127.0.0.1",
            9,
            username="root",
            keys=keys,
            deadline=Deadline(30),
            alive=lambda: "QEMU exited with 1",
        )


def test_generated_keys_have_a_dropbear_host_key_and_parseable_public_lines(keys: SshKeys) -> None:
    assert keys.host_key_dropbear.startswith(b"\0\0\0\x0bssh-ed25519\0\0\0\x40")
    assert public_key(keys.host_public_line).get_base64() == keys.host_key.get_base64()
    assert keys.client_public_line.startswith("ssh-ed25519 ")
    with pytest.raises(SshError, match="expected an 'ssh-ed25519"):
        public_key("ssh-rsa AAAA")


def test_connect_sends_nothing_until_the_server_says_it_started(keys: SshKeys) -> None:
    """A guest that says on its console when its sshd starts is not probed before that (a probe
    held by QEMU's user-mode network would cost up to its whole timeout after the server is up);
    once it says so, the server is found at once, and a server that never says so times out
    with that reason."""
    said = threading.Event()
    for listener in _serve(keys.host_key, keys):
        threading.Timer(0.5, said.set).start()
        started = time.monotonic()
        sess = SshSession.connect(
            "127.0.0.1", listener.port, username="root", keys=keys, deadline=Deadline(15), ready=said.is_set
        )
        try:
            assert time.monotonic() - started >= 0.5
            assert len(listener.transports) == 2, "one probe (after it said so), then the session"
            assert sess.exec(["big"], timeout=60).exit_code == BIG_EXIT
        finally:
            sess.close()
    with pytest.raises(DeadlineExceeded, match="has not said it started"):
        SshSession.connect(
            "127.0.0.1", 9, username="root", keys=keys, deadline=Deadline(0.5), ready=lambda: False
        )
