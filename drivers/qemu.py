"""The QEMU/VFIO adapter: each sandbox is a VM with its GPUs passed through, reached over SSH.

On real hardware every granted GPU (with its IOMMU-group companions) is moved to vfio-pci by
drivers.vfio and handed to the VM behind its own PCIe root port. On the simulated host nothing can
be passed through: the same VFIO steps run against a fake sysfs tree (so ``release`` is checked),
and the guest receives its granted GPUs' nodes, descriptors and nvidia-smi through fw_cfg, from
the simulated host's plan (faults applied). The rest is real either way: QEMU boots the guest
(KVM when it works, TCG otherwise) and paramiko connects over SSH with a pinned host key.

Options (``qemu.<key>``): binary, accel (auto|kvm|tcg), memory (MiB), cpus, cpu (model), kernel + initrd
[+ append, disk] (a runner's own guest), guest_cache, python_rootfs, single (1: one GPU per VM,
as OpenShell's VM driver), sysfs_root, vfio_state.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from gpuconform.drivers import pci_bars, vfio
from gpuconform.drivers import qemu_guest as guest
from gpuconform.drivers import qemu_vm as vm
from gpuconform.drivers.base import Adapter, AdapterContext, ExecResult, Launch, Sandbox
from gpuconform.drivers.errors import Deadline, HarnessError, InfrastructureError, RequestRejected
from gpuconform.drivers.inventory import SCHEME_PCI, GpuRecord, InventoryError, normalise_pci_bus_id
from gpuconform.drivers.labels import LABEL_HOST, LABEL_RUN, LabelledRun, host_label, merge_runs
from gpuconform.drivers.leases import Lease
from gpuconform.drivers.profile import Availability, Expectation, OptionSpec, Profile
from gpuconform.drivers.qemu_vfio import VfioSite, vfio_sites
from gpuconform.drivers.request import GpuRequest
from gpuconform.drivers.selection import Selection
from gpuconform.drivers.ssh import SshError, SshSession, generate_keys
from gpuconform.drivers.vfio_state import pid_alive
from gpuconform.fixtures.build.guestimage import GuestImage

IMAGE_ENV = {"busybox-envall": {"NVIDIA_VISIBLE_DEVICES": "all"}}  # what that image kind bakes in
PORT_ATTEMPTS = 3
CONSOLE_KEEP = 64 * 1024
# The built guest says on its console when it starts its SSH server (images/guest/init.sh). The
# host probes for the server only from then on: QEMU's user-mode network holds a probe sent
# earlier silently, so it costs up to a probe's whole timeout after the server is up (measured:
# 0.7 s of a 3.8 s boot).
SSHD_MARK = b"gpuconform-guest: starting sshd"


def _console_says(console: Path, mark: bytes) -> bool:
    try:
        return mark in console.read_bytes()
    except OSError:
        return False


class QemuSandbox(Sandbox):
    """One VM. ``console_log`` is the guest's serial console (kept in memory after close)."""

    adapter: QemuAdapter

    def __init__(self, adapter: QemuAdapter, launch: Launch) -> None:
        super().__init__(adapter, launch, f"{vm.NAME_PREFIX}{adapter.ctx.run_id}-{secrets.token_hex(4)}")
        self.gpus = tuple(sorted(launch.selection.lease.gpus, key=lambda g: g.index))
        self.dir = adapter.vm_base(adapter.ctx.run_id) / self.id
        self.image_kind = launch.image
        self._env = {**IMAGE_ENV.get(launch.image, {}), **launch.env}
        self.bindings: list[vfio.Binding] = []
        self.site: VfioSite | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ssh: SshSession | None = None
        self._console = ""

    @property
    def console_log(self) -> str | None:
        path = self.dir / "console.log"
        return path.read_text(errors="replace")[-CONSOLE_KEEP:] if path.is_file() else self._console

    def boot(self, deadline: Deadline) -> None:
        """Bind, boot, connect; the caller closes the sandbox when this raises."""
        self.dir.mkdir(parents=True)
        # Labels and GPUs on disk first: leftovers() finds what a failed start left by them.
        owner = {
            "pid": os.getpid(),
            "name": self.id,
            "labels": self.labels,
            "gpus": [g.pci_bus_id for g in self.gpus],
        }
        (self.dir / "owner.json").write_text(json.dumps(owner))
        keys = generate_keys()
        fw_cfg = guest.write_keys(self.dir, keys)
        self.site = self.adapter.vfio_site()
        granted = tuple(g.pci_bus_id for g in self.gpus)
        for gpu in self.gpus:  # real or fake sysfs: bind and release always run
            if any(gpu.pci_bus_id in b.bdfs for b in self.bindings):
                continue  # moved with an earlier GPU of its IOMMU group
            self.bindings.append(
                self.site.bind(
                    gpu.pci_bus_id, run_id=self.adapter.ctx.run_id, deadline=deadline, granted=granted
                )
            )
        passthrough: tuple[str, ...] = ()
        hole64: int | None = None
        if self.adapter.simulated:
            payload = guest.sim_payload(self.adapter.ctx, self.gpus)
            if payload.manifest:
                (self.dir / "manifest").write_text(payload.manifest)
                fw_cfg += [("manifest", self.dir / "manifest"), *payload.files]
        else:
            passthrough = granted
            hole64 = pci_bars.hole64_for(passthrough, self.site.sysfs_root)
        image = self.adapter.guest_image(deadline)
        disks, extra = guest.boot_disks(self.adapter.ctx.options, image, self.image_kind, deadline)
        stderr_log = self.dir / "qemu.stderr"
        for attempt in range(PORT_ATTEMPTS):
            spec = self.adapter.vm_spec(
                self.id,
                image,
                image.append + extra,
                vm.free_port(),
                self.dir,
                passthrough,
                tuple(fw_cfg),
                disks,
                hole64,
            )
            booted = time.monotonic()
            self._proc = proc = vm.launch(spec, stderr_log)

            def alive(proc: subprocess.Popen[bytes] = proc, console: Path = spec.console_log) -> str | None:
                return vm.describe_exit(proc, stderr_log, console)

            def sshd_started(console: Path = spec.console_log) -> bool:
                return _console_says(console, SSHD_MARK)

            try:
                self._ssh = SshSession.connect(
                    "127.0.0.1",
                    spec.ssh_port,
                    username="root",
                    keys=keys,
                    deadline=deadline,
                    alive=alive,
                    ready=sshd_started if image.source == "built" else None,  # a runner's own: probe
                )
                break
            except SshError as exc:  # a port taken between free_port() and QEMU's bind is retried
                lost_port = "hostfwd" in vm.log_tail(stderr_log, 5)
                vm.stop(proc)
                if not lost_port or attempt == PORT_ATTEMPTS - 1:
                    tail = vm.log_tail(spec.console_log, 2)
                    raise InfrastructureError(
                        f"VM {self.id} did not come up: {exc}", hint=f"guest console: {tail or 'empty'}"
                    ) from None
        first = self.exec(["true"], timeout=deadline.cap(60))
        if not first.ok:
            raise InfrastructureError(f"VM {self.id}: first exec failed: {first.to_json(200)}")
        self.timings["provision_s"] = round(time.monotonic() - booted, 3)

    def raw_exec(self, argv: Sequence[str], *, timeout: float, stdin: bytes | None = None) -> ExecResult:
        if self._ssh is None or self.closed:
            raise InfrastructureError(f"VM {self.id} is not running")
        env = [f"{k}={v}" for k, v in sorted(self._env.items())]
        return self._ssh.exec(["env", *env, *argv] if env else argv, timeout=timeout, stdin=stdin)

    def put_file(self, path: str, data: bytes, mode: int = 0o755) -> None:
        """Over SFTP (the guest's dropbear serves it): no shell, no size limit of an argv."""
        if self._ssh is None or self.closed:
            raise InfrastructureError(f"VM {self.id} is not running")
        self._ssh.put_file(path, data, mode)

    def teardown(self) -> None:
        """SSH, QEMU (SIGTERM, then SIGKILL), the VM directory, the VFIO bindings."""
        problems: list[str] = []
        if self._ssh is not None:
            self._ssh.close()
        if self._proc is not None:
            vm.stop(self._proc)
        self._console = self.console_log or ""
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists():
            problems.append(f"could not remove {self.dir}")
        for binding in reversed(self.bindings):
            try:
                if self.site is not None:
                    self.site.release(binding)
            except vfio.VfioError as exc:
                problems.append(str(exc))
        if problems:
            raise InfrastructureError(f"teardown of VM {self.id} incomplete: {'; '.join(problems)}")


class QemuAdapter(Adapter):
    name = "qemu"
    OPTIONS = {
        f"qemu.{key}": spec
        for key, spec in {
            "binary": OptionSpec("the qemu-system executable", "path"),
            "accel": OptionSpec("accelerator", "choice", ("auto", "kvm", "tcg")),
            "memory": OptionSpec("guest memory in MiB", "int"),
            "cpus": OptionSpec("guest vCPUs", "int"),
            "cpu": OptionSpec("guest CPU model (default: host under KVM, Nehalem under TCG)"),
            "kernel": OptionSpec("a runner's own guest kernel (with qemu.initrd)", "path"),
            "initrd": OptionSpec("a runner's own guest initramfs (with qemu.kernel)", "path"),
            "append": OptionSpec("kernel command line of a runner's own guest"),
            "disk": OptionSpec("a runner's own guest disk image", "path"),
            "guest_cache": OptionSpec("where the built guest is cached", "path"),
            "python_rootfs": OptionSpec("root filesystem with python3 and numpy for compute cases", "path"),
            "single": OptionSpec("1: one GPU per VM, as a single-GPU VM driver", "flag"),
            "sysfs_root": OptionSpec("sysfs the VFIO steps work on", "path"),
            "vfio_state": OptionSpec("file recording VFIO bindings for crash-safe release", "path"),
        }.items()
    }
    id_scheme = SCHEME_PCI
    node_minors_follow_host = False  # the guest driver numbers its own /dev/nvidiaN
    provision_weight = 10.0  # a guest boot (seconds under TCG) against a container's start
    # Boots are slow and independent: ports are the OS's, VFIO bindings, the fake sysfs tree and
    # the guest cache are each under a file lock.
    concurrent_starts = True
    single = False

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self._image: GuestImage | None = None

    def opt(self, key: str, default: str = "") -> str:
        return self.ctx.options.get(f"qemu.{key}") or default

    @property
    def simulated(self) -> bool:
        return self.ctx.inventory.simulated

    @property
    def single_gpu(self) -> bool:
        return self.single or self.opt("single") == "1"

    @property
    def profile(self) -> Profile:
        # VFIO passes whole PCI functions: a MIG device cannot be given to a VM (mig.*).
        cases: dict[str, Expectation] = {"device.unsupported": "unsupported", "mig.*": "unsupported"}
        cases["lifecycle.*"] = "unsupported"  # VFIO hands the VM the whole function: no reload rewrites it
        if self.single_gpu:
            cases.update({"count.2": "reject", "device.pair": "reject"})
            if len(self.ctx.inventory.gpus) > 1:
                cases.update({"count.max": "reject", "smi.all": "reject"})
        per_vm = "one vfio-pci GPU per VM (as OpenShell's VM driver)" if self.single_gpu else "N GPUs per VM"
        sim = "; simulated: fake sysfs for VFIO, GPUs through fw_cfg" if self.simulated else ""
        return Profile(
            driver=self.name,
            cases=cases,
            exclusive=True,
            oversubscribe="reject",
            notes=f"{per_vm}; PCI bus ids or host indices; the harness leases GPUs{sim}",
        )

    # Environment ------------------------------------------------------------------------------
    def guest_image(self, deadline: Deadline) -> GuestImage:
        if self._image is None:
            self._image = guest.resolve_image(self.ctx.options, deadline)
        return self._image

    def accel(self) -> tuple[str, str]:
        forced = self.opt("accel", "auto")
        if forced in ("kvm", "tcg"):
            return forced, "forced by qemu.accel"
        kernel = self.guest_image(Deadline(900)).kernel
        ok, why = vm.kvm_usable(self.opt("binary", "qemu-system-x86_64"), kernel)
        return ("kvm", why) if ok else ("tcg", why)

    def vfio_site(self) -> VfioSite:
        return vfio_sites(self.ctx, create=True)[0]

    def vm_base(self, run_id: str) -> Path:
        return Path(self.ctx.state_dir) / "qemu" / "vms" / run_id

    def vm_spec(
        self,
        name: str,
        image: GuestImage,
        append: str,
        port: int,
        vm_dir: Path,
        passthrough: tuple[str, ...],
        fw_cfg: tuple[tuple[str, Path], ...],
        disks: tuple[Path, ...],
        pci_hole64: int | None = None,
    ) -> vm.VmSpec:
        try:
            # A simulated guest runs nvidia-smi and the probe's numpy on small arrays: 512 MiB.
            memory = int(self.opt("memory", "512" if self.simulated else "8192"))
            # Under TCG every vCPU is a host thread emulating it: one is as fast to boot and run
            # a command (measured: same wall time, 14% less CPU than two), and a parallel run's
            # VMs then leave the host's cores to each other.
            accel = self.accel()[0]
            cpus = int(self.opt("cpus", "2" if accel == "kvm" else "1"))
        except ValueError:
            raise InfrastructureError("qemu.memory and qemu.cpus must be whole numbers") from None
        return vm.VmSpec(
            name=name,
            binary=self.opt("binary", "qemu-system-x86_64"),
            accel=accel,
            memory_mib=memory,
            cpus=cpus,
            kernel=image.kernel,
            initrd=image.initrd,
            append=append,
            ssh_port=port,
            console_log=vm_dir / "console.log",
            pidfile=vm_dir / "qemu.pid",
            vfio_bdfs=passthrough,
            fw_cfg=fw_cfg,
            disks=disks,
            pci_hole64=pci_hole64,
            cpu_model=self.opt("cpu", ""),
        )

    def available(self) -> Availability:
        binary = self.opt("binary", "qemu-system-x86_64")
        if shutil.which(binary) is None:
            return Availability(False, f"{binary} not found (hint: apt-get install qemu-system-x86)")
        try:
            image = self.guest_image(Deadline(900))
            accel, why = self.accel()
            restored = self.reconcile()
            site = self.vfio_site()
        except HarnessError as exc:
            return Availability(False, f"qemu: {exc}")
        self.versions = {
            "qemu": vm.qemu_version(binary) or "unknown",
            "accel": accel,
            "accel_reason": why,
            "machine": "q35",
            "vfio": site.describe(),
            **image.versions(),
        }
        if restored:
            self.versions["vfio_reconciled"] = "; ".join(restored)
        return Availability(True, versions=dict(self.versions))

    # Requests ---------------------------------------------------------------------------------
    def resolve_ids(self, device_ids: Sequence[str]) -> list[GpuRecord]:
        """GPUs named by PCI bus id (any domain width) or host index; an unknown id is rejected."""
        inv, out = self.ctx.inventory, []
        for raw in device_ids:
            gpu = inv.resolve(SCHEME_PCI, raw)
            if gpu is None:
                with contextlib.suppress(InventoryError):
                    bdf = normalise_pci_bus_id(raw)
                    gpu = next((g for g in inv.gpus if g.pci_bus_id == bdf), None)
            if gpu is None:
                known = ", ".join(i for g in inv.gpus for i in g.ids(SCHEME_PCI)) or "none"
                raise RequestRejected(
                    f"unknown GPU device id '{raw}': no PCI bus id or index of this host",
                    hint=f"known ids: {known}",
                )
            if gpu in out:
                raise RequestRejected(f"device id '{raw}' names GPU {gpu.pci_bus_id} a second time")
            out.append(gpu)
        return out

    def select(self, req: GpuRequest, deadline: Deadline) -> Selection:
        """Lease the named GPUs (PCI bus ids or host indices), or free ones for a count; more
        than the host has (or than one VM takes) is rejected here, before anything starts."""
        if self.single_gpu and req.wanted > 1:
            raise RequestRejected(
                f"{self.name} passes one GPU per VM; {req.wanted} requested",
                hint="request one GPU (as OpenShell's VM driver)",
            )
        if req.device_ids:
            lease = self.ctx.leases.acquire_exact(self.resolve_ids(req.device_ids), deadline)
        elif req.gpu:
            lease = self.ctx.leases.acquire(self.ctx.inventory.gpus, req.wanted, deadline)
        else:
            lease = Lease(())
        return Selection(tuple(g.pci_bus_id for g in lease.gpus), lease.uuids, lease)

    def start(self, launch: Launch) -> Sandbox:
        sandbox = QemuSandbox(self, launch)
        try:
            sandbox.boot(launch.deadline)
        except BaseException:
            with contextlib.suppress(HarnessError):
                sandbox.close()
            raise
        return sandbox

    def local_image(self, kind: str, deadline: Deadline) -> str:
        return kind  # the guest is built per kind (boot_disks); the kind names no engine image

    # Cleanup ----------------------------------------------------------------------------------
    def release_problems(self, sandbox: Sandbox) -> list[str]:
        """What the closed VM left: a QEMU process, a binding record, a device not given back."""
        if not isinstance(sandbox, QemuSandbox):
            return super().release_problems(sandbox)
        problems = [f"QEMU {n} (pid {p}) still runs" for p, n in vm.vm_processes(sandbox.id).items()]
        return problems + (sandbox.site.leftovers(sandbox.bindings) if sandbox.site is not None else [])

    def leftovers(self, labels: Mapping[str, str]) -> list[str]:
        """What VMs started with all of ``labels`` left: QEMU processes, VM directories, VFIO
        bindings and devices not back on their driver. A QEMU process or a binding of this run
        that no VM directory accounts for (its start failed before or after) counts too."""
        run_id = labels.get(LABEL_RUN, self.ctx.run_id)
        base = self.vm_base(run_id)
        found: list[str] = []
        others: dict[str, list[str]] = {}  # VMs of this run with other labels -> their GPUs
        for vm_dir in sorted(base.iterdir()) if base.is_dir() else ():
            try:
                owner = json.loads((vm_dir / "owner.json").read_text())
            except (OSError, ValueError):
                owner = {}
            vm_labels = owner.get("labels") or {}
            if all(vm_labels.get(k) == v for k, v in labels.items()):
                found.append(f"VM directory {vm_dir}")
            else:
                others[vm_dir.name] = [str(g) for g in owner.get("gpus") or []]
        for pid, name in sorted(vm.vm_processes(f"{vm.NAME_PREFIX}{run_id}-").items()):
            if name not in others:
                found.append(f"QEMU {name} (pid {pid}) still runs")
        held_by_others = {g for gpus in others.values() for g in gpus}
        for site in vfio_sites(self.ctx, create=False):
            stale = [
                b for b in site.state.entries() if b.run_id == run_id and b.gpu_bdf not in held_by_others
            ]
            found += site.leftovers(stale)
        return found

    def labelled_runs(self) -> list[LabelledRun]:
        """Runs with VM directories, QEMU processes or VFIO bindings here (all of this host's),
        less those with a VM or binding whose owner process is alive (a run that still works)."""
        here, found, live = host_label(), [], set()
        base = self.vm_base("-").parent
        for run_dir in sorted(base.iterdir()) if base.is_dir() else ():
            found.append(({LABEL_RUN: run_dir.name, LABEL_HOST: here}, run_dir.stat().st_mtime))
            if any(pid_alive(_owner_pid(owner)) for owner in run_dir.glob("*/owner.json")):
                live.add(run_dir.name)
        runs = {run.run_id for run in merge_runs(found)}
        for pid, name in vm.vm_processes(vm.NAME_PREFIX).items():
            run_id = next((r for r in runs if name.startswith(f"{vm.NAME_PREFIX}{r}-")), "")
            if not run_id:  # a VM whose directory is gone: its run id is the name less the suffix
                run_id = name.removeprefix(vm.NAME_PREFIX).rsplit("-", 1)[0]
            found.append(({LABEL_RUN: run_id, LABEL_HOST: here}, _started(pid)))
        for site in vfio_sites(self.ctx, create=False):
            for b in site.state.entries():
                found.append(({LABEL_RUN: b.run_id, LABEL_HOST: here}, b.created))
                if pid_alive(b.pid):
                    live.add(b.run_id)
        return [run for run in merge_runs(found) if run.run_id not in live]

    def reconcile(self) -> list[str]:
        """Give back the GPUs of bindings whose process died (a SIGKILLed run)."""
        return [line for site in vfio_sites(self.ctx, create=False) for line in site.reconcile()]

    def gc(self, run_id: str | None = None) -> list[str]:
        """Kill the run's QEMU processes (found by name), remove its VM directories, reconcile VFIO."""
        removed = []
        prefix = f"{vm.NAME_PREFIX}{run_id}-" if run_id else vm.NAME_PREFIX
        for pid, name in sorted(vm.vm_processes(prefix).items()):
            if vm.kill_vm(pid, name):
                removed.append(f"QEMU {name} (pid {pid})")
        base = self.vm_base(run_id) if run_id else self.vm_base("-").parent
        if base.is_dir():
            shutil.rmtree(base, ignore_errors=True)
            removed.append(f"VM directories under {base}")
        return removed + self.reconcile()


def _owner_pid(owner: Path) -> int:
    try:
        return int(json.loads(owner.read_text()).get("pid") or 0)
    except (OSError, ValueError, AttributeError):
        return 0


def _started(pid: int) -> float:
    """When process ``pid`` started (epoch seconds; its /proc entry is made then), or now if gone."""
    try:
        return os.stat(f"/proc/{pid}").st_ctime
    except OSError:
        return time.time()


class QemuSingleAdapter(QemuAdapter):
    """``qemu-single``: the profile variant that matches OpenShell's VM driver (one GPU per VM)."""

    name = "qemu-single"
    single = True
