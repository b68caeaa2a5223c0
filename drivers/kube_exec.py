"""Exec in a pod through the API's exec subresource, with the real exit code and a deadline.

The websocket protocol (``v4.channel.k8s.io``, and v5 where the server offers it) prefixes every
frame with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 the final status as JSON. The exit code
lives only in that status (``Success``, or ``NonZeroExitCode`` with an ``ExitCode`` cause), so it
is parsed here rather than trusting the client's ``returncode`` (which raises on other failures).

Two hazards of the client are avoided on purpose: ``read_stdout()`` without a timeout blocks
forever, and ``kubernetes.stream.stream`` temporarily swaps the ApiClient's transport, so every
exec gets an ApiClient of its own (sharing only the Configuration) and runs its connect in a
worker thread bounded by the deadline.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpuconform.drivers.base import ExecResult, InfrastructureError

STDOUT, STDERR, STATUS = 1, 2, 3
STDIN_CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
# Runtime errors that mean "the program does not exist": reported as a shell would (exit 127).
_NOT_FOUND_MARKERS = ("executable file not found", "no such file or directory")


class ExecProtocolError(InfrastructureError):
    """The exec channel ended without a status the harness can read."""


@dataclass(frozen=True)
class ExecStatus:
    exit_code: int
    message: str = ""


def parse_exec_status(text: str) -> ExecStatus:
    """The exit code from the status channel's JSON (``metav1.Status``).

    ``Success`` is 0; ``NonZeroExitCode`` carries the code in the ``ExitCode`` cause; a runtime
    error saying the executable was not found is 127 (what podman exec and a shell report).
    Anything else is an ExecProtocolError with the server's message.
    """
    if not text.strip():
        raise ExecProtocolError(
            "exec ended without a status on channel 3 (expected Success or NonZeroExitCode)",
            hint="the connection was cut; see the pod's diagnostics",
        )
    try:
        doc = json.loads(text)
    except ValueError:
        raise ExecProtocolError(f"exec status is not JSON: {text[:200]!r}") from None
    if not isinstance(doc, dict):
        raise ExecProtocolError(f"exec status is not an object: {text[:200]!r}")
    message = str(doc.get("message") or "")
    if doc.get("status") == "Success":
        return ExecStatus(0, message)
    if doc.get("reason") == "NonZeroExitCode":
        for cause in (doc.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                try:
                    return ExecStatus(int(cause.get("message")), message)
                except (TypeError, ValueError):
                    break
        raise ExecProtocolError(f"NonZeroExitCode status without a numeric ExitCode cause: {text[:300]}")
    if any(marker in message.lower() for marker in _NOT_FOUND_MARKERS):
        return ExecStatus(127, message)
    raise ExecProtocolError(
        f"exec failed: {doc.get('reason') or doc.get('status')}: {message or text[:300]}",
        hint="the container runtime refused the exec; see the pod's diagnostics",
    )


def _connect(
    configuration: Any, namespace: str, pod: str, container: str, argv: Sequence[str], with_stdin: bool
) -> Any:
    from kubernetes import client
    from kubernetes.stream import stream

    core = client.CoreV1Api(client.ApiClient(configuration))
    return stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        command=list(argv),
        container=container,
        stdin=with_stdin,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )


def exec_in_pod(
    configuration: Any,
    namespace: str,
    pod: str,
    container: str,
    argv: Sequence[str],
    *,
    timeout: float,
    stdin: bytes | None = None,
) -> ExecResult:
    """Run ``argv`` in the pod; ExecResult(timed_out=True) when ``timeout`` passes first."""
    from websocket import WebSocketException

    start = time.monotonic()
    end = start + timeout
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kube-exec-connect")
    future = pool.submit(_connect, configuration, namespace, pod, container, argv, stdin is not None)
    pool.shutdown(wait=False)
    try:
        ws = future.result(timeout=max(0.01, min(CONNECT_TIMEOUT_S, end - time.monotonic())))
    except concurrent.futures.TimeoutError:
        future.add_done_callback(lambda f: f.exception() is None and f.result().close())
        return ExecResult(
            tuple(argv),
            None,
            "",
            "exec: websocket connect timed out",
            time.monotonic() - start,
            timed_out=True,
        )
    except Exception as exc:
        raise InfrastructureError(
            f"exec in {namespace}/{pod} failed to connect: {getattr(exc, 'reason', None) or exc}",
            hint="is the pod running and the exec subresource reachable?",
        ) from None
    out: list[str] = []
    err: list[str] = []
    try:
        ws.sock.settimeout(max(0.1, end - time.monotonic()))
        if stdin is not None:
            for offset in range(0, len(stdin), STDIN_CHUNK):
                ws.write_stdin(stdin[offset : offset + STDIN_CHUNK])
            ws.close_channel(0)  # v5 only; a no-op on v4, where put_file_argv needs no EOF
        while ws.is_open():
            remaining = end - time.monotonic()
            if remaining <= 0:
                return ExecResult(
                    tuple(argv), None, "".join(out), "".join(err), time.monotonic() - start, timed_out=True
                )
            ws.update(timeout=min(remaining, 1.0))
            out.append(ws.read_channel(STDOUT, timeout=0))
            err.append(ws.read_channel(STDERR, timeout=0))
        out.append(ws.read_channel(STDOUT, timeout=0))
        err.append(ws.read_channel(STDERR, timeout=0))
        status_text = ws.read_channel(STATUS, timeout=0)
    except (OSError, WebSocketException) as exc:  # timeouts and resets: the deadline or the server
        if time.monotonic() >= end:
            return ExecResult(
                tuple(argv), None, "".join(out), "".join(err), time.monotonic() - start, timed_out=True
            )
        raise InfrastructureError(f"exec in {namespace}/{pod}: connection lost ({exc})") from None
    finally:
        ws.close()
    status = parse_exec_status(status_text)
    stderr = "".join(err)
    if status.exit_code == 127 and status.message and status.message not in stderr:
        stderr += status.message + "\n"
    return ExecResult(tuple(argv), status.exit_code, "".join(out), stderr, time.monotonic() - start)
