"""The GPU request model of SPEC section 3, and its validation.

A request is validated before anything is provisioned, so a malformed request never costs a
sandbox. Validation messages follow the upstream OpenShell wording (seeds/000, seeds/001) so a
driver author recognises them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class RequestError(ValueError):
    """A request that cannot be valid on any driver; the message names the field."""


@dataclass(frozen=True)
class GpuRequest:
    """What a sandbox asks for: no GPU, one or N driver-chosen GPUs, or exact native ids.

    ``count`` is ``None`` for the bare default request (``--gpu``), which means one GPU.
    ``device_ids`` are in the driver's native form (CDI names, PCI bus ids, indices).
    """

    gpu: bool = False
    count: int | None = None
    device_ids: tuple[str, ...] = ()

    @classmethod
    def none(cls) -> GpuRequest:
        return cls()

    @classmethod
    def default(cls) -> GpuRequest:
        return cls(gpu=True)

    @classmethod
    def of_count(cls, count: int) -> GpuRequest:
        return cls(gpu=True, count=count)

    @classmethod
    def of_ids(cls, ids: Sequence[str], count: int | None = None) -> GpuRequest:
        return cls(gpu=True, count=count, device_ids=tuple(ids))

    @property
    def wanted(self) -> int:
        """How many GPUs a valid request yields (0 for the negative control)."""
        if not self.gpu:
            return 0
        if self.count is not None:
            return self.count
        return max(1, len(self.device_ids))

    def validate(self) -> GpuRequest:
        """Raise RequestError for a request no driver may accept; return self otherwise."""
        count = self.count
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int):
                raise RequestError(f"gpu count must be a whole number, got {count!r}")
            if count < 1:
                raise RequestError("gpu count must be greater than 0")
        if count is not None and not self.gpu:
            raise RequestError("gpu count requires a gpu request")
        if not self.device_ids:
            return self
        seen: set[str] = set()
        for device_id in self.device_ids:
            if not isinstance(device_id, str) or not device_id.strip():
                raise RequestError(f"device ids must be non-empty strings, got {device_id!r}")
            if device_id in seen:
                raise RequestError(f"contains duplicate device ID '{device_id}'")
            seen.add(device_id)
        if not self.gpu:
            raise RequestError("device ids require a gpu request")
        expected = 1 if count is None else count
        if expected != len(self.device_ids):
            raise RequestError(
                f"gpu count ({expected}) must match device ids length ({len(self.device_ids)})"
            )
        return self

    @property
    def shape(self) -> str:
        """A short stable key; sandboxes are shared between cases of the same shape."""
        if not self.gpu:
            return "none"
        parts = ["gpu"]
        if self.count is not None:
            parts.append(f"count={self.count}")
        if self.device_ids:
            parts.append("ids=" + ",".join(self.device_ids))
        return ";".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "count": self.count, "device_ids": list(self.device_ids)}

    @classmethod
    def from_json(cls, data: Any) -> GpuRequest:
        """Build and validate a request from its JSON form (a dict, or a JSON string)."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise RequestError(f"request is not valid JSON: {exc.msg} at char {exc.pos}") from None
        if not isinstance(data, Mapping):
            raise RequestError('request must be an object like {"gpu": true, "count": 2, "device_ids": []}')
        unknown = set(data) - {"gpu", "count", "device_ids"}
        if unknown:
            raise RequestError(f"unknown request field(s): {', '.join(sorted(unknown))}")
        gpu = data.get("gpu", False)
        if not isinstance(gpu, bool):
            raise RequestError(f"gpu must be true or false, got {gpu!r}")
        ids = data.get("device_ids")
        if ids is None:  # not `or []`: 0, false and "" are wrong types, not "no ids"
            ids = []
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise RequestError(f"device_ids must be a list of strings, got {ids!r}")
        return cls(gpu=gpu, count=data.get("count"), device_ids=tuple(ids)).validate()
