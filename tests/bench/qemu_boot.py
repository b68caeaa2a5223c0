"""Benchmark: a QEMU guest's time to first exec, variants alternated in one session.

Not a test (CI times nothing): run it by hand, as root, after setup::

    python3 tests/bench/qemu_boot.py [--boots 5] [--gpus 1] [VARIANT ...]

A VARIANT is ``NAME`` or ``NAME:key=value,key=value`` with ``qemu.*`` adapter options (for
example ``old:qemu.kernel=/path/vmlinuz,qemu.initrd=/path/initrd.img,qemu.append=...``); with
none given it measures the default (built, cached) guest alone. Boots alternate between the
variants (A B A B ...) so that a change in the machine's load hits each of them alike; each boot
is a real provision through the QEMU adapter on a simulated host (bind, boot, SSH, first exec).
Prints, per variant, the median and the range of ``provision_s`` and of the guest's own
"userspace up" and "starting sshd" times from its console, plus the load average at start and
end: on a loaded machine compare medians, never single boots.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gpuconform.drivers.base import AdapterContext, Deadline  # noqa: E402
from gpuconform.drivers.leases import GpuLeases  # noqa: E402
from gpuconform.drivers.qemu import QemuAdapter, QemuSandbox  # noqa: E402
from gpuconform.drivers.request import GpuRequest  # noqa: E402
from gpuconform.fixtures.sim.offer import simulated_host  # noqa: E402
from gpuconform.fixtures.sim.simgpu.host import SimHost  # noqa: E402

GUEST_MARK = re.compile(r"gpuconform-guest: (userspace up|starting sshd) after ([0-9.]+)s")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("qemu."):
            raise SystemExit(f"bad variant item {item!r}: expected qemu.KEY=VALUE")
        options[key] = value
    return name, options


def boot_once(sim: SimHost, tmp: Path, options: dict[str, str], gpus: int) -> dict[str, float]:
    ctx = AdapterContext(
        sim.inventory,
        GpuLeases(tmp / "leases"),
        run_id=f"bench{secrets.token_hex(3)}",
        state_dir=tmp / "state",
        options={"sim.root": str(sim.root), **options},
        sim=simulated_host({"sim.root": str(sim.root)}, sim.inventory),
    )
    adapter = QemuAdapter(ctx)
    box = adapter.provision(GpuRequest.of_count(gpus), image="busybox", labels={}, deadline=Deadline(300))
    assert isinstance(box, QemuSandbox)
    try:
        figures = {"provision_s": box.timings["provision_s"]}
    finally:
        box.close()
    for what, value in GUEST_MARK.findall(box.console_log or ""):
        figures["userspace_s" if what == "userspace up" else "sshd_s"] = float(value)
    return figures


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):5.2f}s  [{min(values):.2f}..{max(values):.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--boots", type=int, default=5, help="boots per variant (default 5)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per VM (default 1)")
    parser.add_argument("variants", nargs="*", default=["default"])
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qemu-boot-bench-") as tmpdir:
        tmp = Path(tmpdir)
        sim = SimHost.up("h100x4", instance=f"b{secrets.token_hex(4)}", base=tmp / "sim", cdi_dir=tmp / "cdi")
        try:
            for i in range(args.boots):
                for name, options in variants:
                    got = boot_once(sim, tmp, options, args.gpus)
                    results[name].append(got)
                    shown = "  ".join(f"{k}={v:.2f}" for k, v in got.items())
                    print(f"boot {i + 1} {name:>10}: {shown}", flush=True)
        finally:
            sim.down()
    load_end = os.getloadavg()
    loads = f"at start {load_start[0]:.2f}, at end {load_end[0]:.2f}"
    print(f"\nload average (1 min) {loads}; {os.cpu_count()} CPUs")
    for name, _ in variants:
        rows = results[name]
        print(f"{name}:")
        for key in ("provision_s", "userspace_s", "sshd_s"):
            print(f"  {key:<12} {summary([r[key] for r in rows if key in r])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
