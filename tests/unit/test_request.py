"""GpuRequest validation (SPEC 3, exact messages), shape keys and the JSON form."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gpuconform.drivers.request import GpuRequest, RequestError


def _message(req: GpuRequest) -> str:
    with pytest.raises(RequestError) as info:
        req.validate()
    return str(info.value)


# -- validation rules of SPEC 3 -----------------------------------------------------------------


def test_count_zero_is_rejected_with_the_spec_message() -> None:
    assert _message(GpuRequest.of_count(0)) == "gpu count must be greater than 0"


def test_negative_count_is_rejected_with_the_spec_message() -> None:
    assert _message(GpuRequest.of_count(-3)) == "gpu count must be greater than 0"


@pytest.mark.parametrize(
    ("count", "shown"), [(2.5, "2.5"), (True, "True"), ("2", "'2'")], ids=["float", "bool", "str"]
)
def test_non_whole_count_is_rejected_naming_the_count(count: object, shown: str) -> None:
    req = GpuRequest(gpu=True, count=cast(Any, count))
    assert _message(req) == f"gpu count must be a whole number, got {shown}"


def test_duplicate_device_id_is_named_in_the_message() -> None:
    req = GpuRequest.of_ids(["nvidia.com/gpu=0", "nvidia.com/gpu=0"], count=2)
    assert _message(req) == "contains duplicate device ID 'nvidia.com/gpu=0'"


def test_device_ids_without_a_gpu_request_are_rejected() -> None:
    req = GpuRequest(gpu=False, device_ids=("nvidia.com/gpu=0",))
    assert _message(req) == "device ids require a gpu request"


def test_count_without_a_gpu_request_is_rejected() -> None:
    assert _message(GpuRequest(gpu=False, count=1)) == "gpu count requires a gpu request"


def test_count_must_match_the_number_of_device_ids() -> None:
    req = GpuRequest.of_ids(["nvidia.com/gpu=0", "nvidia.com/gpu=1"], count=1)
    assert _message(req) == "gpu count (1) must match device ids length (2)"


def test_two_ids_with_a_bare_default_request_must_match_one() -> None:
    req = GpuRequest.of_ids(["0", "1"])
    assert _message(req) == "gpu count (1) must match device ids length (2)"


def test_one_id_with_a_bare_default_request_is_valid() -> None:
    req = GpuRequest.of_ids(["nvidia.com/gpu=3"])
    assert req.validate() is req
    assert req.wanted == 1


def test_matching_count_and_ids_are_valid() -> None:
    req = GpuRequest.of_ids(["0", "1"], count=2)
    assert req.validate() is req
    assert req.wanted == 2


@pytest.mark.parametrize("bad", ["", "   "], ids=["empty", "blank"])
def test_empty_device_id_is_rejected(bad: str) -> None:
    assert _message(GpuRequest.of_ids([bad])) == f"device ids must be non-empty strings, got {bad!r}"


def test_non_string_device_id_is_rejected() -> None:
    req = GpuRequest(gpu=True, device_ids=cast(Any, (3,)))
    assert _message(req) == "device ids must be non-empty strings, got 3"


def test_none_default_and_count_requests_are_valid() -> None:
    assert GpuRequest.none().validate().wanted == 0
    assert GpuRequest.default().validate().wanted == 1
    assert GpuRequest.of_count(4).validate().wanted == 4


# -- shape keys ----------------------------------------------------------------------------------


def test_shape_keys_differ_between_distinct_requests() -> None:
    requests = [
        GpuRequest.none(),
        GpuRequest.default(),
        GpuRequest.of_count(1),
        GpuRequest.of_count(2),
        GpuRequest.of_ids(["0"]),
        GpuRequest.of_ids(["1"]),
        GpuRequest.of_ids(["0"], count=1),
        GpuRequest.of_ids(["0", "1"], count=2),
        GpuRequest.of_ids(["1", "0"], count=2),
    ]
    shapes = [r.shape for r in requests]
    assert len(set(shapes)) == len(shapes), shapes


def test_shape_is_stable_for_equal_requests() -> None:
    assert GpuRequest.of_count(2).shape == GpuRequest(gpu=True, count=2).shape == "gpu;count=2"
    assert GpuRequest.none().shape == "none"


# -- JSON form -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        GpuRequest.none(),
        GpuRequest.default(),
        GpuRequest.of_count(3),
        GpuRequest.of_ids(["nvidia.com/gpu=0"]),
        GpuRequest.of_ids(["0000:18:00.0", "0000:2d:00.0"], count=2),
    ],
    ids=lambda r: r.shape,
)
def test_to_json_from_json_round_trip(req: GpuRequest) -> None:
    assert GpuRequest.from_json(req.to_json()) == req


def test_from_json_accepts_a_json_string() -> None:
    req = GpuRequest.from_json('{"gpu": true, "count": 2, "device_ids": ["a", "b"]}')
    assert req == GpuRequest.of_ids(["a", "b"], count=2)


def _from_json_message(data: Any) -> str:
    with pytest.raises(RequestError) as info:
        GpuRequest.from_json(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_from_json_malformed_string_is_a_one_line_error() -> None:
    assert _from_json_message('{"gpu": true,') == (
        "request is not valid JSON: Expecting property name enclosed in double quotes at char 13"
    )


def test_from_json_empty_string_is_a_one_line_error() -> None:
    assert _from_json_message("") == "request is not valid JSON: Expecting value at char 0"


@pytest.mark.parametrize("data", [[1, 2], "[true]", 7, None], ids=["list", "json-list", "int", "none"])
def test_from_json_non_object_is_rejected(data: Any) -> None:
    assert _from_json_message(data).startswith("request must be an object like {")


def test_from_json_unknown_fields_are_named() -> None:
    message = _from_json_message({"gpu": True, "gpus": 2, "devices": []})
    assert message == "unknown request field(s): devices, gpus"


def test_from_json_gpu_must_be_a_bool() -> None:
    assert _from_json_message({"gpu": "yes"}) == "gpu must be true or false, got 'yes'"


@pytest.mark.parametrize(
    ("ids", "shown"),
    [
        ("nvidia.com/gpu=0", "'nvidia.com/gpu=0'"),
        ("", "''"),
        ({"a": 1}, "{'a': 1}"),
        (0, "0"),
        (False, "False"),
    ],
    ids=["str", "empty-str", "dict", "zero", "false"],
)
def test_from_json_device_ids_must_be_a_list(ids: Any, shown: str) -> None:
    message = _from_json_message({"gpu": True, "device_ids": ids})
    assert message == f"device_ids must be a list of strings, got {shown}"


def test_from_json_null_device_ids_mean_none() -> None:
    assert GpuRequest.from_json({"gpu": True, "device_ids": None}) == GpuRequest.default()


def test_from_json_count_of_wrong_type_is_rejected() -> None:
    assert _from_json_message({"gpu": True, "count": "2"}) == "gpu count must be a whole number, got '2'"


def test_from_json_validates_the_request() -> None:
    message = _from_json_message({"gpu": True, "count": 1, "device_ids": ["a", "b"]})
    assert message == "gpu count (1) must match device ids length (2)"
