"""smi.default, smi.none, smi.all, smi.nodes judged on what a fake sandbox shows (issue 18).

Each row: a stack (the simulator's faults, or a field shape from the failure-class survey), the
verdict the case must produce, and the words of its reason that name the defect. The sandboxes
are tests/unit/fakesandbox.py's: the real suite function, the real Cell and judges, no engine.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpuconform.drivers.base import Profile
from gpuconform.reports.evidence import Verdict
from tests.unit.fakesandbox import (
    NOT_FOUND_IN_PATH,
    NVML_MISMATCH,
    NVML_NO_PERMISSION,
    NVML_UNKNOWN,
    PERMISSION_DENIED,
    Answer,
    FakeAdapter,
    Shape,
    engine_error,
    inventory,
    run_case,
    smi_list,
    world,
)

INV = inventory("h100x4")
U = [g.uuid for g in INV.gpus]
NAME = INV.gpus[0].name
PASS, FAIL, ERROR, INCONCLUSIVE = Verdict.PASS, Verdict.FAIL, Verdict.ERROR, Verdict.INCONCLUSIVE
TABLE_OUTPUT = "+-----------------------------------------------------------------------------+\n"


def smi(code: int | None, stdout: str = "", stderr: str = "", *, on_path: bool = True) -> Shape:
    """Every nvidia-smi call answers ``code``/``stdout``/``stderr`` (a failure shape)."""
    answers = {"nvidia-smi": Answer(code, stdout, stderr)}
    if not on_path:
        answers["sh -c command -v nvidia-smi"] = Answer(1)
    return Shape(answers=answers)


def listing(text: str, query: str | None = None) -> Shape:
    answers = {"nvidia-smi -L": Answer(0, text)}
    if query is not None:
        answers["nvidia-smi --query-gpu"] = Answer(0, query)
    return Shape(answers=answers)


def row(uuid: str, *, name: str = NAME, memory: int = 81559, driver: str = "580.105.08") -> str:
    return f"0, {uuid}, {name}, 00000000:18:00.0, {memory}, {driver}\n"


SMI_DEFAULT: list[Any] = [
    pytest.param({}, PASS, [f"sees exactly {U[0]}", "name, memory and driver match"], id="healthy"),
    # -- the simulator's faults
    pytest.param(
        {"faults": [("wrong-gpu", 0)]}, FAIL, [f"wrong GPUs: extra {U[1]}; missing {U[0]}"], id="wrong-gpu"
    ),
    pytest.param({"faults": [("extra-gpu", 0)]}, FAIL, [f"wrong GPUs: extra {U[1]}"], id="extra-gpu"),
    pytest.param(
        {"faults": [("uuid-mismatch", 0)]}, FAIL, ["not in the host inventory: GPU-"], id="uuid-mismatch"
    ),
    pytest.param(
        {"faults": [("fallen-off-bus", 0)]},
        FAIL,
        ["exited 15 (GPU_IS_LOST)", "GPU is lost"],
        id="fallen-off-bus",
    ),
    pytest.param({"faults": [("missing-gpu", 0)]}, FAIL, [f"wrong GPUs: missing {U[0]}"], id="missing-gpu"),
    pytest.param(
        {"faults": [("extra-node", 0)]}, FAIL, ["device nodes", "extra /dev/nvidia1"], id="extra-node"
    ),
    # nvidia-smi is healthy under cuda-unusable: that is cuda.init's to catch, not smi.default's
    pytest.param({"faults": [("cuda-unusable", 0)]}, PASS, [f"sees exactly {U[0]}"], id="cuda-unusable"),
    # -- field shapes (failure-class survey)
    pytest.param(
        {"shape": smi(255, "", NVML_UNKNOWN)},
        FAIL,
        ["exited 255 (UNKNOWN)", "Unknown Error"],
        id="nvml-unknown-after-reload",
    ),
    pytest.param(
        {"shape": smi(18, NVML_MISMATCH)},
        FAIL,
        ["exited 18 (LIB_RM_VERSION_MISMATCH)"],
        id="version-mismatch",
    ),
    pytest.param(
        {"shape": smi(4, NVML_NO_PERMISSION)}, FAIL, ["exited 4 (NO_PERMISSION)"], id="permission-denied"
    ),
    pytest.param(
        {"shape": smi(126, "", PERMISSION_DENIED)},
        FAIL,
        ["present but cannot execute", "/usr/bin/nvidia-smi"],
        id="smi-not-executable",
    ),
    pytest.param(
        {"shape": smi(127, "", NOT_FOUND_IN_PATH, on_path=False)},
        FAIL,
        ["nvidia-smi is not present"],
        id="smi-absent",
    ),
    pytest.param(
        {"shape": smi(6, "No devices were found\n")}, FAIL, ["exited 6 (NOT_FOUND)"], id="no-devices-exit-6"
    ),
    pytest.param(
        {"shape": listing("No devices found.\n")}, FAIL, [f"missing {U[0]}"], id="no-devices-exit-0"
    ),
    pytest.param(
        {"shape": listing(smi_list([(NAME, U[0]), (NAME, U[0])]))},
        FAIL,
        ["lists a GPU twice"],
        id="listed-twice",
    ),
    pytest.param(
        {"shape": listing(TABLE_OUTPUT)},
        INCONCLUSIVE,
        ["could not parse the evidence"],
        id="unparseable-list",
    ),
    pytest.param(
        {"shape": listing(smi_list([(NAME, U[0])]), "garbage, row\n")},
        INCONCLUSIVE,
        ["could not parse"],
        id="unparseable-query",
    ),
    pytest.param(
        {"shape": listing(smi_list([(NAME, U[0])]), row(U[1]))},
        FAIL,
        ["--query-gpu and -L disagree"],
        id="query-disagrees",
    ),
    pytest.param(
        {"shape": listing(smi_list([(NAME, U[0])]), row(U[0], driver="570.86.15"))},
        FAIL,
        ["driver_version '570.86.15' != host '580.105.08'"],
        id="stale-driver",
    ),
    pytest.param(
        {"shape": listing(smi_list([(NAME, U[0])]), row(U[0], memory=40960))},
        FAIL,
        ["memory.total '40960' != host 81559"],
        id="wrong-memory",
    ),
    pytest.param(
        {"shape": listing(smi_list([(NAME, U[0])]), row(U[0], name="NVIDIA A100-SXM4-80GB"))},
        FAIL,
        ["name 'NVIDIA A100-SXM4-80GB' != host"],
        id="wrong-name",
    ),
    pytest.param({"shape": smi(None)}, ERROR, ["timed out"], id="smi-hangs"),
    pytest.param(
        {"shape": listing(smi_list([(NAME, U[0]), (NAME, U[1]), (NAME, U[2])]))},
        FAIL,
        [f"extra {U[1]}, {U[2]}"],
        id="two-extra",
    ),
    pytest.param(
        {"shape": Shape(extra_nodes=frozenset({2, 3}))},
        FAIL,
        ["extra /dev/nvidia2, /dev/nvidia3"],
        id="two-extra-nodes",
    ),
    pytest.param(
        {"shape": Shape(answers={"nvidia-smi --query-gpu": Answer(255, "", NVML_UNKNOWN)})},
        FAIL,
        ["nvidia-smi --query-gpu: nvidia-smi exited 255"],
        id="query-fails",
    ),
    pytest.param(
        {"shape": smi(127, "", NOT_FOUND_IN_PATH + " " + "q" * 400, on_path=False)},
        FAIL,
        ["not present"],
        id="smi-absent-long",
    ),
    pytest.param(
        {"shape": smi(255, "", NVML_UNKNOWN + " " + "x" * 400)},
        FAIL,
        ["exited 255 (UNKNOWN)"],
        id="long-stderr",
    ),
    pytest.param(
        {"shape": Shape(answers={"nvidia-smi": Answer(None, "", "Killed", killed=True)})},
        FAIL,
        ["exited -1 (EXIT_-1)"],
        id="smi-killed-by-signal",
    ),
    pytest.param(
        {
            "shape": Shape(
                answers={
                    "nvidia-smi": Answer(127, "", NOT_FOUND_IN_PATH),
                    "sh -c command -v nvidia-smi": Answer(0, "alias nvidia-smi='true'\n"),
                }
            )
        },
        FAIL,
        ["nvidia-smi is not present"],
        id="smi-only-an-alias",
    ),
    pytest.param(
        {
            "shape": Shape(
                answers={
                    "nvidia-smi": Answer(127, "", NOT_FOUND_IN_PATH),
                    "sh -c command -v nvidia-smi": Answer(1, "/usr/bin/nvidia-smi\n"),
                }
            )
        },
        FAIL,
        ["nvidia-smi is not present"],
        id="smi-command-v-fails",
    ),
    pytest.param(
        {"faults": [("extra-node", 0)], "profile": Profile("fake", cases={"smi.nodes": "unsupported"})},
        PASS,
        ["sees exactly"],
        id="extra-node-not-held-to-nodes",
    ),
    pytest.param(
        {"shape": Shape(answers={"ls -1 /dev": Answer(2, "", "ls: " + "y" * 400)})},
        ERROR,
        ["could not list /dev"],
        id="ls-dev-fails-long",
    ),
    pytest.param(
        {"shape": Shape(answers={"ls -1 /dev": Answer(2, "", "ls: /dev: Permission denied")})},
        ERROR,
        ["could not list /dev"],
        id="ls-dev-fails",
    ),
]


def check(case: str, adapter: FakeAdapter, verdict: Verdict, words: list[str]) -> None:
    outcome = run_case(case, adapter)
    assert outcome.verdict is verdict, outcome.reason
    for word in words:
        assert word in outcome.reason, f"{word!r} not in {outcome.reason!r}"


@pytest.mark.parametrize(("stack", "verdict", "words"), SMI_DEFAULT)
def test_smi_default(stack: dict[str, Any], verdict: Verdict, words: list[str]) -> None:
    check("smi.default", world(**stack), verdict, words)


def test_smi_default_engine_errors() -> None:
    broken = world()
    broken.provision = engine_error("podman: cannot connect to the service")  # type: ignore[method-assign]
    check("smi.default", broken, ERROR, ["InfrastructureError", "cannot connect"])
    refusing = world(refusal=lambda req: "unresolvable CDI devices sim.gpuconform.dev/fake=0")
    refusing.taken = frozenset(U)  # nothing free: the engine refuses the default request
    check(
        "smi.default", refusing, FAIL, ["rejected a request the profile declares supported", "unresolvable"]
    )


def none_sees(text: str, nodes: frozenset[int] = frozenset()) -> Shape:
    return Shape(answers={"nvidia-smi -L": Answer(0, text)}, extra_nodes=nodes)


SMI_NONE: list[Any] = [
    pytest.param(Shape(), PASS, ["no /dev/nvidiaN", "No devices found"], id="healthy-no-devices-found"),
    pytest.param(smi(127, "", NOT_FOUND_IN_PATH, on_path=False), PASS, ["no nvidia-smi"], id="no-smi-binary"),
    pytest.param(smi(6, "No devices were found\n"), PASS, ["no devices (exit 6)"], id="no-devices-exit-6"),
    # what the always-hook / privileged classes show: the GPU's node, or the GPU itself
    pytest.param(
        none_sees("No devices found.\n", frozenset({0})),
        FAIL,
        ["device nodes /dev/nvidia[0] present"],
        id="node-leak",
    ),
    pytest.param(
        none_sees(smi_list([(NAME, U[0]), (NAME, U[1])])), FAIL, ["the sandbox sees 2 GPU(s)"], id="sees-gpus"
    ),
    # an nvidia-smi that says neither: never a pass
    pytest.param(smi(255, "", NVML_UNKNOWN), INCONCLUSIVE, ["exited 255 (UNKNOWN)"], id="nvml-unknown"),
    pytest.param(
        smi(9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"),
        INCONCLUSIVE,
        ["exited 9 (DRIVER_NOT_LOADED)"],
        id="driver-not-loaded",
    ),
    pytest.param(
        smi(6, "something else\n"), INCONCLUSIVE, ["exited 6 (NOT_FOUND)"], id="exit-6-without-the-words"
    ),
    pytest.param(smi(0, TABLE_OUTPUT), INCONCLUSIVE, ["could not parse"], id="unparseable"),
    pytest.param(
        smi(255, "partial output", NVML_UNKNOWN + " " + "z" * 300),
        INCONCLUSIVE,
        ["exited 255"],
        id="nvml-unknown-long",
    ),
    pytest.param(
        smi(None, "", "Killed", on_path=True), ERROR, ["nvidia-smi -L timed out after 60s"], id="hangs"
    ),
    pytest.param(
        Shape(answers={"nvidia-smi": Answer(None, "", "Killed", killed=True)}),
        INCONCLUSIVE,
        ["exited -1"],
        id="killed",
    ),
]


@pytest.mark.parametrize(("shape", "verdict", "words"), SMI_NONE)
def test_smi_none(shape: Shape, verdict: Verdict, words: list[str]) -> None:
    check("smi.none", world(shape_for={"none": shape}), verdict, words)


SMI_ALL: list[Any] = [
    pytest.param({}, PASS, ["sees exactly the 4 inventory GPUs"], id="healthy"),
    pytest.param({"faults": [("missing-gpu", 2)]}, FAIL, [f"missing {U[2]}"], id="missing-gpu"),
    pytest.param({"faults": [("wrong-gpu", 1)]}, FAIL, [f"missing {U[1]}"], id="wrong-gpu"),
    pytest.param({"faults": [("uuid-mismatch", 3)]}, FAIL, ["not in the host inventory"], id="uuid-mismatch"),
    pytest.param({"faults": [("fallen-off-bus", 2)]}, FAIL, ["GPU_IS_LOST"], id="fallen-off-bus"),
    pytest.param({"shape": smi(4, NVML_NO_PERMISSION)}, FAIL, ["NO_PERMISSION"], id="permission-denied"),
    pytest.param({"all_ids": ["all"]}, PASS, ["the all-GPUs form (gpu;ids=all)"], id="cdi-all-id"),
]


@pytest.mark.parametrize(("stack", "verdict", "words"), SMI_ALL)
def test_smi_all(stack: dict[str, Any], verdict: Verdict, words: list[str]) -> None:
    check("smi.all", world(**stack), verdict, words)


SMI_NODES: list[Any] = [
    pytest.param({}, PASS, ["/dev/nvidia[0] match the grant"], id="healthy"),
    pytest.param(
        {"faults": [("extra-node", 0)]},
        FAIL,
        ["/dev/nvidia[0, 1] do not match", "/dev/nvidia[0]"],
        id="extra-node",
    ),
    pytest.param({"faults": [("missing-gpu", 0)]}, FAIL, ["/dev/nvidia[] do not match"], id="missing-gpu"),
    pytest.param(
        {"faults": [("wrong-gpu", 0)]},
        FAIL,
        ["/dev/nvidia[1] do not match the granted GPU(s) /dev/nvidia[0]"],
        id="wrong-gpu",
    ),
    # the driver chose (granted unknown, as on kubernetes): judged by count through nvidia-smi
    pytest.param({"granted_known": False}, PASS, ["match the grant"], id="driver-chose-healthy"),
    pytest.param(
        {"granted_known": False, "faults": [("extra-gpu", 0)]},
        FAIL,
        ["sees 2 GPU(s) for a request of 1"],
        id="driver-chose-extra-gpu",
    ),
    pytest.param({"shape": Shape(extra_nodes=frozenset({3}))}, FAIL, ["do not match"], id="node-leak"),
]


@pytest.mark.parametrize(("stack", "verdict", "words"), SMI_NODES)
def test_smi_nodes(stack: dict[str, Any], verdict: Verdict, words: list[str]) -> None:
    check("smi.nodes", world(**stack), verdict, words)


def test_a_vm_is_held_to_the_count_of_its_nodes() -> None:
    """A guest numbers its own nodes: one node for one GPU passes whatever its minor."""
    vm = world(shape=Shape(extra_nodes=frozenset({7})), faults=[("missing-gpu", 0)])
    vm.node_minors_follow_host = False
    check("smi.nodes", vm, PASS, ["/dev/nvidia[7]"])
    vm2 = world(shape=Shape(extra_nodes=frozenset({7})))
    vm2.node_minors_follow_host = False
    check("smi.nodes", vm2, FAIL, ["2 device node(s) for 1 granted GPU(s)"])


def test_every_sandbox_is_closed() -> None:
    adapter = world()
    for case in ("smi.default", "smi.none", "smi.all", "smi.nodes"):
        run_case(case, adapter)
    assert adapter.provisioned and all(s.closed for s in adapter.provisioned)


def test_the_evidence_names_what_was_seen() -> None:
    outcome = run_case("smi.default", world(faults=[("extra-gpu", 0)]))
    assert outcome.cell.parsed["seen"] == sorted(U[:2])
    assert outcome.cell.parsed["expected"] == [U[0]]
    assert [c["argv"][:2] for c in outcome.cell.commands][0] == ["nvidia-smi", "-L"]
