"""The ``gpuconform`` command line: run the matrix, manage the simulated host, read the results.

``gpuconform run`` is a thin front end over ``pytest conformance`` with the plugin's options, so
everything it does can also be done with plain pytest. It spells those options short (``--out``,
``--drivers``); pytest takes them under our prefix (``--gpuconform-out``), and this module
translates (fixtures/settings.py holds the one table of them). Errors are one line, never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path

EXAMPLES = """\
examples:
  gpuconform run --out results/                 every driver available here; simulated host without a GPU
  gpuconform run --drivers podman -k count      one driver, one case family
  gpuconform run --sim h100x4 --sim-fault wrong-gpu:1 --drivers podman
                                                prove a CDI spec injecting the wrong GPU is caught
  gpuconform matrix results/results.json --format md
  gpuconform gate baseline/matrix.json results/results.json --waivers waivers.yaml
  gpuconform gate baseline.json results/results.json --drivers docker --hosts gpu-a
                                                gate one column of one runner against a fleet baseline
  gpuconform doctor --drivers podman,docker-cdi  what this machine lacks for those columns
  gpuconform sim up --profile a100x8 --name dev  &&  gpuconform sim status
  gpuconform gc                                 remove what killed runs left behind

verdicts: pass, rejected (refused as the profile requires; counts as a pass), fail, unsupported,
skip (precondition missing), error (harness or infrastructure broke), inconclusive (unparseable).
"""


def _conformance_dir() -> Path:
    return Path(__file__).resolve().parent


def _plugin_module(name: str = "gpuconform", default: str = "gpuconform.fixtures.plugin") -> str:
    """One of the harness's plugins, by the module its pytest11 entry point names (else this
    checkout's): ``gpuconform`` (the plugin) and ``gpuconform-reports`` (the reports it hands
    records to)."""
    for ep in entry_points(group="pytest11"):
        if ep.name == name:
            return ep.value
    return default


def _become_root_for_simulation(argv: Sequence[str]) -> None:
    """On a developer machine without a GPU, re-run as root with sudo (the simulated host creates
    device nodes and drives rootful engines); say so in one line. Root, or a GPU host, goes on."""
    if os.geteuid() == 0 or Path("/dev/nvidiactl").exists() or shutil.which("sudo") is None:
        return
    print("gpuconform: the simulated GPU host needs root; re-running with sudo", file=sys.stderr)
    keep = "--preserve-env=GPUCONFORM_STATE,GPUCONFORM_CACHE,GPUCONFORM_RUN_ID,DOCKER_HOST,KUBECONFIG"
    os.execvp("sudo", ["sudo", keep, sys.executable, "-m", "gpuconform.conformance.cli", *argv])


def _attr(name: str) -> str:
    """The attribute argparse gives ``--NAME`` on ``gpuconform run``'s namespace."""
    return name.replace("-", "_")


def _add_plugin_options(run: argparse.ArgumentParser) -> None:
    """Every plugin option, spelled short (``--out``), from the plugin's own table, so the two
    command lines cannot drift apart."""
    from gpuconform.fixtures.settings import OPTIONS, SHORT

    for option in OPTIONS:
        run.add_argument(
            SHORT.flag(option.name),
            dest=_attr(option.name),
            action="append" if option.repeatable else "store",
            default=option.default,
            metavar=option.metavar,
            help=option.help,
        )


def _gpuconform_args(args: argparse.Namespace) -> list[str]:
    """The plugin's own options, as ``gpuconform run`` passes them to pytest: prefixed, and joined
    to their values (``--gpuconform-host-name=-x``), so a value never reads as an option."""
    from gpuconform.fixtures.settings import OPTIONS, PYTEST

    argv: list[str] = []
    for option in OPTIONS:
        value = getattr(args, _attr(option.name))
        for item in (value or []) if option.repeatable else ([] if value is None else [value]):
            argv.append(f"{PYTEST.flag(option.name)}={item}")
    return argv


def _pytest_args(args: argparse.Namespace) -> list[str]:
    """What came after ``--``, for pytest: a plugin option there may be spelled as ``gpuconform
    run`` spells it (``-- --provision-timeout 60``, as before the options carried the prefix) and
    is translated; everything else passes unchanged."""
    from gpuconform.fixtures.settings import prefixed_argv

    return prefixed_argv(list(args.pytest_args or []))


def _workers(args: argparse.Namespace) -> str | None:
    """``-n`` as pytest-xdist takes it, or None to run in this process."""
    return None if args.numprocesses in (None, "", "0") else str(args.numprocesses)


def _preflight(args: argparse.Namespace, plugin_argv: Sequence[str]) -> None:
    """Every check before pytest starts (fixtures/preflight.py): raises with one line, creates nothing.

    The plugin's options are parsed by the plugin's own definitions, so options given after
    ``--`` (``--provision-timeout``) are checked the same way; errors name them as typed here.
    """
    from _pytest.config.argparsing import Parser

    from gpuconform.fixtures import preflight
    from gpuconform.fixtures.settings import SHORT, Settings, add_options

    parser = Parser(_ispytest=True)
    add_options(parser)
    try:
        namespace = parser.parse_known_args([*plugin_argv, *_pytest_args(args)])
    except SystemExit:  # argparse already printed its one line
        raise preflight.PreflightError("bad option after --", hint="see gpuconform run --help") from None
    preflight.check_run(Settings.from_options(namespace, SHORT))
    preflight.check_workers(args.numprocesses)
    if _workers(args) is not None:
        preflight.check_plugin("xdist", f"-n {args.numprocesses}", "pytest-xdist")
    if args.allure:
        preflight.check_plugin("allure_pytest", "--allure", "allure-pytest")
        preflight.check_writable_dir(Path(args.allure), "--allure")
    preflight.check_keyword(args.k)
    preflight.check_stray_words(args.pytest_args or [])


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the run (its xdist workers inherit them), then as before."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def cmd_run(args: argparse.Namespace) -> int:
    """pytest over the suites with only the plugins the harness needs, after every check passed.

    Plugin autoloading is off, so whatever the user's environment installed (pytest-benchmark,
    hypothesis) neither prints into the run nor changes it, and no module of this package is
    marked for assertion rewriting after it was imported (pytest's "Module already imported"
    warning). Outputs go beside --out and replace it only when the run ends (fixtures/outdir.py).
    """
    import pytest

    plugin_argv = _gpuconform_args(args)
    _preflight(args, plugin_argv)
    argv = [
        str(_conformance_dir()),
        "-p",
        _plugin_module(),
        "-p",
        _plugin_module("gpuconform-reports", "gpuconform.reports.pytest_reports"),
        "-p",
        "no:cacheprovider",
        "-v",
        "--tb=no",
        "-o",
        "console_output_style=count",
        "--rootdir",
        str(_conformance_dir().parent),
        *plugin_argv,
    ]
    if args.k:
        argv += ["-k", args.k]
    workers = _workers(args)
    if workers is not None or importlib.util.find_spec("xdist") is not None:
        argv += ["-p", "xdist.plugin"]  # also with -n 0: the plugin's xdist_group marks are known
    if workers is not None:
        argv += ["-n", workers]
    if args.allure:
        argv += ["-p", "allure_pytest.plugin", f"--alluredir={args.allure}"]
    argv += _pytest_args(args)
    run_id = os.environ.get("GPUCONFORM_RUN_ID") or secrets.token_hex(4)
    with _environment({"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "GPUCONFORM_RUN_ID": run_id}):
        code = int(pytest.main(argv))
    # A check only pytest could make (an option after --) stopped it: a usage error here too.
    if code == int(pytest.ExitCode.USAGE_ERROR):
        return 2
    _print_doctor_hints(Path(args.out) / "results.json", args)
    return code


def _print_doctor_hints(results: Path, args: argparse.Namespace) -> None:
    """doctor's missing/wrong lines for each driver the run found unavailable (never changes the
    run's exit status: a hint that cannot be computed says so in one line)."""
    if not results.exists():
        return
    from gpuconform.conformance.doctor.hints import unavailable_hints

    options = dict(item.split("=", 1) for item in args.driver_opt or [] if "=" in item)
    lines = unavailable_hints(results, sim=args.sim, sim_instance=args.sim_instance, driver_options=options)
    if lines:
        print("\n".join(lines))


def cmd_bench(args: argparse.Namespace) -> int:
    """The bandwidth-parity benchmark: cuda.bandwidth on each adapter, ratios to the bare host."""
    from gpuconform.reports.bandwidth import bandwidth_table
    from gpuconform.reports.evidence import read_results

    args.k = "cuda.bandwidth"
    code = cmd_run(args)
    results = Path(args.out) / "results.json"
    if results.exists():
        print(bandwidth_table(read_results(results)[1]))
    return code


def cmd_sim(args: argparse.Namespace) -> int:
    from gpuconform.fixtures.sim.simgpu.host import SimHost

    if args.action == "up":
        sim = SimHost.up(
            args.profile, faults=args.fault or (), instance=args.name, cdi_dir=Path(args.cdi_dir)
        )
        print(f"simulated host {sim.instance} up: {len(sim.inventory.gpus)} x {sim.inventory.gpus[0].name}")
        print(f"  CDI kind {sim.cdi_kind}, spec {sim.cdi_spec_path}")
        for gpu in sim.inventory.gpus:
            print(f"  GPU {gpu.index}: {gpu.uuid}  {gpu.pci_bus_id}  ids: {', '.join(gpu.ids('cdi'))}")
        return 0
    if args.action == "down":
        found = SimHost.find(args.name)
        if found is None:
            print(f"no simulated host named {args.name} is up")
            return 0
        found.down()
        print(f"simulated host {args.name} removed")
        return 0
    if args.action == "status":
        rows = SimHost.status()
        if not rows:
            print("no simulated host is up")
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
        return 0
    for line in SimHost.gc(cdi_dir=Path(args.cdi_dir)):
        print(line)
    return 0


def _load(path: str, *, note: bool = True):  # type: ignore[no-untyped-def]
    from gpuconform.reports.matrix import MatrixError, load_run

    try:
        loaded = load_run(Path(path))
    except MatrixError as exc:
        if "(hint: " in str(exc) or "hint:" in str(exc):
            raise
        raise MatrixError(f"{exc} (hint: give a results.json or matrix.json that gpuconform wrote)") from None
    label = _partial_label(path) if note else ""
    if label:
        print(f"gpuconform: note: {label}", file=sys.stderr)
    return loaded


def _partial_label(path: str) -> str:
    """One line saying that ``path`` holds a run cut short (fixtures/outdir.py), or ''."""
    import json

    from gpuconform.fixtures.outdir import partial_of

    try:
        partial, missing = partial_of(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return ""
    if not partial:
        return ""
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return f"PARTIAL RUN: {path} was cut short; {len(missing)} selected cell(s) did not run: {shown or '?'}"


def _refuse_partial(path: str) -> None:
    """A gate judges a whole run: a partial one would pass by leaving out what failed."""
    from gpuconform.fixtures.preflight import PreflightError

    label = _partial_label(path)
    if label:
        raise PreflightError(f"gate: {label}", hint="gate a run that finished; rerun gpuconform run")


def cmd_matrix(args: argparse.Namespace) -> int:
    from gpuconform.reports.render import render

    matrix, records = _load(args.results, note=args.format not in ("terminal", "md"))
    text = render(matrix, records, args.format, color=sys.stdout.isatty() and args.format == "terminal")
    label = _partial_label(args.results)
    if label and args.format in ("terminal", "md"):
        text = f"{'**' + label + '**' if args.format == 'md' else label}\n\n{text}"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    import json

    from gpuconform.reports.matrix import merge

    fleet = merge([_load(path)[0] for path in args.inputs])
    Path(args.output).write_text(json.dumps(fleet.to_json(), indent=2, sort_keys=True))
    print(f"wrote fleet matrix of {len(fleet.hosts)} host(s) to {args.output}")
    return 0


def _selected_drivers(args: argparse.Namespace) -> list[str] | None:
    """``--drivers a,b --drivers c`` as one list, or None (every column)."""
    if not args.drivers:
        return None
    return [part.strip() for value in args.drivers for part in value.split(",") if part.strip()]


def _selected_hosts(args: argparse.Namespace) -> list[str] | None:
    """``--hosts a,b`` as one list, or None (every host)."""
    if not args.hosts:
        return None
    return [part.strip() for value in args.hosts for part in value.split(",") if part.strip()]


def cmd_diff(args: argparse.Namespace) -> int:
    from gpuconform.reports.diff import diff

    baseline, current = _load(args.baseline)[0], _load(args.current)[0]
    print(diff(baseline, current, drivers=_selected_drivers(args), hosts=_selected_hosts(args)).summary())
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    import datetime as dt

    from gpuconform.reports.diff import diff, gate, load_waivers

    _refuse_partial(args.current)
    waivers = load_waivers(Path(args.waivers)) if args.waivers else []
    baseline, current = _load(args.baseline)[0], _load(args.current)[0]
    compared = diff(baseline, current, drivers=_selected_drivers(args), hosts=_selected_hosts(args))
    result = gate(compared, waivers, dt.date.today())
    print(result.summary())
    return 0 if result.passed else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """Every prerequisite of each requested driver, one line each; 0 only when all are ready."""
    import json

    from gpuconform.conformance.doctor import DoctorOptions, run_doctor

    options: dict[str, str] = {}
    for item in args.driver_opt or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--driver-opt takes KEY=VALUE, got {item!r} (hint: kubernetes.context=X)")
        options[key.strip()] = value.strip()
    report = run_doctor(
        DoctorOptions(
            drivers=tuple(_selected_drivers(args) or ()) or None,
            sim=args.sim,
            sim_instance=args.sim_instance,
            cdi_dirs=tuple(Path(d) for d in args.cdi_dir or ()),
            driver_options=options,
        )
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return report.exit_code


def cmd_gc(args: argparse.Namespace) -> int:
    """Collect what dead runs left; 1 when an engine that is here refused a removal."""
    from gpuconform.fixtures.reaper import GRACE_S, reap_dead_runs

    try:
        grace = GRACE_S if args.grace is None else float(args.grace)
    except ValueError:
        grace = -1.0
    if not grace >= 0:  # NaN too
        raise ValueError(f"--grace takes seconds >= 0, got {args.grace!r} (hint: --grace 600)")
    report = reap_dead_runs(grace_s=grace)
    for line in report.removed + report.kept + (report.skipped if args.verbose else []):
        print(line)
    for line in report.failed:
        print(line, file=sys.stderr)
    if not report.removed and not report.kept and report.ok:
        print("nothing to remove")
    return 0 if report.ok else 1


def cmd_images(args: argparse.Namespace) -> int:
    from gpuconform.fixtures.build.images import build_all

    for name, ref in build_all(args.engine.split(","), args.kinds.split(",") if args.kinds else None).items():
        print(f"{name}: {ref}")
    if args.guest:
        from gpuconform.drivers.base import Deadline
        from gpuconform.fixtures.build.guestimage import build_guest_image

        image = build_guest_image(deadline=Deadline(900))
        print(f"qemu guest: kernel {image.kernel}, initrd {image.initrd}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from gpuconform.fixtures.sim.kind.cluster import main as kind_main

    return kind_main([args.action, *[a for a in args.kind_args if a != "--kind"]])


def cmd_drivers(args: argparse.Namespace) -> int:
    from gpuconform.drivers.registry import known_drivers

    for name in known_drivers():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuconform",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
        description="Conformance harness for GPU-enabled sandbox drivers (docker, podman, kubernetes, qemu).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the conformance matrix",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES + "\nAnything after -- goes to pytest unchanged, except the options above, which "
        "pytest spells --gpuconform-NAME: given there as --NAME, they are translated.",
    )
    _add_plugin_options(run)
    run.add_argument("-k", help="pytest -k expression over ids like 'podman-count.2'")
    run.add_argument(
        "-n",
        "--numprocesses",
        default="auto",
        help="pytest-xdist workers (default: auto; 0 runs in one process)",
    )
    run.add_argument("--allure", metavar="DIR", help="also write Allure results (needs allure-pytest)")
    run.add_argument("pytest_args", nargs="*", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser(
        "bench",
        help="bandwidth parity: sandbox/host copy-bandwidth ratios per adapter and metric",
        description="Runs cuda.bandwidth on each adapter (the same probe on the bare host, restricted "
        "to the sandbox's GPUs, is the baseline in the same run) and prints the ratios per metric. "
        "On a simulated host the ratios are informational and never judged.",
    )
    for action in run._actions:
        if action.dest not in ("help", "k"):
            bench._add_action(action)
    bench.set_defaults(func=cmd_bench)

    sim = sub.add_parser("sim", help="start, stop or inspect a simulated GPU host")
    sim.add_argument("action", choices=["up", "down", "status", "gc"])
    sim.add_argument("--profile", default="h100x4", help="h100x4, a100x8, h100x2, h100x8, single, mig")
    sim.add_argument("--name", default="gpu", help="instance name; its CDI kind is sim.gpuconform.dev/NAME")
    sim.add_argument("--fault", action="append", help="fault to inject (repeatable)")
    sim.add_argument("--cdi-dir", default="/var/run/cdi", help="where the CDI spec goes")
    sim.set_defaults(func=cmd_sim)

    matrix = sub.add_parser("matrix", help="render results.json or matrix.json")
    matrix.add_argument("results")
    matrix.add_argument("--format", default="terminal", choices=["terminal", "md", "html", "json"])
    matrix.add_argument("-o", "--output", help="write to this file instead of stdout")
    matrix.set_defaults(func=cmd_matrix)

    merge = sub.add_parser("merge", help="merge matrices of several hosts into a fleet matrix")
    merge.add_argument("inputs", nargs="+")
    merge.add_argument("-o", "--output", required=True)
    merge.set_defaults(func=cmd_merge)

    for name, helptext in (
        ("diff", "list regressions, improvements and profile changes"),
        ("gate", "exit 1 on any regression not covered by a waiver"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("baseline")
        p.add_argument("current")
        p.add_argument(
            "--drivers",
            action="append",
            metavar="LIST",
            help="compare only these columns (comma separated); other columns missing from "
            "CURRENT are not regressions",
        )
        p.add_argument(
            "--hosts",
            action="append",
            metavar="LIST",
            help="compare only these hosts (--host-name of the runs), e.g. one runner against a "
            "fleet baseline",
        )
        if name == "gate":
            p.add_argument("--waivers", help="YAML/JSON list of {driver, case, reason, expires}")
        p.set_defaults(func=cmd_diff if name == "diff" else cmd_gate)

    doctor = sub.add_parser(
        "doctor",
        help="check this machine's prerequisites for each driver (exit 0 only when all are ready)",
        description="One line per prerequisite (ok / missing / wrong / note) with a hint: host driver "
        "and nvidia-smi; CDI specs linted (version, names, nodes, mounts, driver libraries); Docker's "
        "CDI dirs and legacy hook; Kubernetes context, device plugin, allocatable GPUs; QEMU's KVM, "
        "IOMMU groups and vfio-pci. Without a GPU it checks a simulated host.",
    )
    doctor.add_argument("--drivers", action="append", metavar="LIST", help="drivers to check (default: all)")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--sim",
        default="auto",
        help="'auto' (default: real GPUs, else a simulated host brought up and down for the check), "
        "'none', or a simulated host profile",
    )
    doctor.add_argument("--sim-instance", help="check a simulated host started with 'gpuconform sim up'")
    doctor.add_argument(
        "--cdi-dir", action="append", help="CDI spec directory to lint (default: /etc/cdi, /var/run/cdi)"
    )
    doctor.add_argument("--driver-opt", action="append", help="KEY=VALUE, e.g. kubernetes.context=kind-gpu")
    doctor.set_defaults(func=cmd_doctor)

    gc = sub.add_parser("gc", help="remove containers, pods, VMs, bindings and simulated hosts of dead runs")
    gc.add_argument(
        "-v", "--verbose", action="store_true", help="also name engines not here and runs left alone"
    )
    gc.add_argument(
        "--grace",
        metavar="SECONDS",
        help="age before a run's resources without a run folder here are collected (default 600)",
    )
    gc.set_defaults(func=cmd_gc)

    images = sub.add_parser("images", help="build the sandbox images locally")
    images.add_argument("action", choices=["build"])
    images.add_argument("--engine", default="podman", help="comma-separated engines to import into")
    images.add_argument("--kinds", help="comma-separated kinds (default: all)")
    images.add_argument("--guest", action="store_true", help="also build the QEMU guest kernel+initramfs")
    images.set_defaults(func=cmd_images)

    cluster = sub.add_parser(
        "cluster",
        help="create or delete a kind cluster with the host's GPUs and the NVIDIA device plugin",
        epilog="Options after the action go to the kind helper: --name, --gpus, --workdir, "
        "--device-plugin-image, --load-image. See docs/kubernetes.md.",
    )
    cluster.add_argument("action", choices=["up", "down", "render"])
    cluster.add_argument("--kind", action="store_true", help="use kind (the only kind of cluster created)")
    cluster.add_argument("kind_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    cluster.set_defaults(func=cmd_cluster)

    drivers = sub.add_parser("drivers", help="list the drivers this installation knows")
    drivers.set_defaults(func=cmd_drivers)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input or the machine's state: one line, never a traceback."""
    from gpuconform.drivers.base import HarnessError

    return (HarnessError, ValueError, OSError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if func in (cmd_run, cmd_bench):
        _become_root_for_simulation(sys.argv[1:] if argv is None else argv)
    try:
        return func(args)
    except _expected_errors() as exc:
        print(f"gpuconform: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpuconform: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
