#!/bin/sh
# /init of the gpuconform QEMU guest (busybox sh, PID 1).
#
# Brings the guest to the point where the harness can reach it over SSH, nothing more:
# kernel modules, loopback + user-mode network, the per-VM SSH keys and the simulated GPUs
# handed in through fw_cfg, then dropbear in the foreground. Any fatal step powers the VM off
# so the host sees QEMU exit at once (with this console output in its log) instead of waiting
# for an SSH port that will never answer.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
FW=/sys/firmware/qemu_fw_cfg/by_name/opt/gpuconform

mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

log() { echo "gpuconform-guest: $*"; }
fatal() {
	log "FATAL: $*"
	sync
	poweroff -f
	sleep 5
	exit 1
}

mount -t proc proc /proc || fatal "cannot mount /proc"
mount -t sysfs sysfs /sys || fatal "cannot mount /sys"
mount -t tmpfs -o mode=0755 tmpfs /run || fatal "cannot mount /run"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fatal "cannot mount /tmp"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts || fatal "cannot mount /dev/pts"
log "userspace up after $(cut -d' ' -f1 /proc/uptime)s"

# Modules, in dependency order (computed from the kernel package at build time).
while read -r mod; do
	[ -n "$mod" ] || continue
	insmod "/lib/modules/$mod" || fatal "insmod $mod failed"
done </etc/gpuconform/modules

n=0
while [ ! -d "$FW" ]; do
	n=$((n + 1))
	[ "$n" -le 50 ] || fatal "fw_cfg entries opt/gpuconform/* not found under $FW (was QEMU given -fw_cfg?)"
	sleep 0.1
done

fwcat() { cat "$FW/$1/raw"; }

# Network: QEMU user-mode networking, static addresses.
hostname gpuconform-guest
ip link set lo up || fatal "cannot bring up lo"
n=0
while [ ! -e /sys/class/net/eth0 ]; do
	n=$((n + 1))
	[ "$n" -le 50 ] || fatal "no eth0 (virtio-net device missing?)"
	sleep 0.1
done
ip link set eth0 up || fatal "cannot bring up eth0"
ip addr add 10.0.2.15/24 dev eth0 || fatal "cannot address eth0"
ip route add default via 10.0.2.2 || fatal "cannot add default route"

# SSH keys: the host key the harness pins, and the client key it authenticates with.
mkdir -p /etc/dropbear /root/.ssh
chmod 0700 /root /root/.ssh
fwcat hostkey >/etc/dropbear/host_key || fatal "no host key in fw_cfg"
chmod 0600 /etc/dropbear/host_key
fwcat authorized_keys >/root/.ssh/authorized_keys || fatal "no authorized key in fw_cfg"
chmod 0600 /root/.ssh/authorized_keys

# Injected files and device nodes (simulated GPUs: descriptors, the nvidia-smi ELF and its
# libnvidia-ml.so.1, /dev/nvidia*; this initramfs has the glibc loader they need).
# Manifest lines: "node PATH TYPE MAJOR MINOR" or "file FWCFG-NAME PATH MODE".
if [ -d "$FW/manifest" ]; then
	fwcat manifest >/run/gpuconform-manifest || fatal "cannot read the manifest"
	while read -r kind a b c d; do
		case "$kind" in
		node)
			parent=${a%/*} # dirname without a subshell: each fork costs tens of ms under TCG
			mkdir -p "${parent:-/}"
			rm -f "$a"
			mknod "$a" "$b" "$c" "$d" || fatal "mknod $a failed"
			chmod 0666 "$a"
			;;
		file)
			parent=${b%/*}
			mkdir -p "${parent:-/}"
			fwcat "$a" >"$b" || fatal "cannot copy fw_cfg $a to $b"
			chmod "$c" "$b"
			;;
		"") ;;
		*) fatal "unknown manifest line: $kind $a $b $c $d" ;;
		esac
	done </run/gpuconform-manifest
	log "injected: $(grep -c . /run/gpuconform-manifest) manifest entries"
fi

# The Python root disk (only VMs for the compute cases get one): python3 runs chrooted in it,
# with this guest's /dev, /proc, /sys, /run and /tmp bound in so it sees the injected GPUs.
if grep -qw gpuconform.pydisk /proc/cmdline; then
	while read -r mod; do
		[ -n "$mod" ] || continue
		insmod "/lib/modules/$mod" || fatal "insmod $mod failed"
	done </etc/gpuconform/modules.disk
	n=0
	while [ ! -b /dev/vda ]; do
		n=$((n + 1))
		[ "$n" -le 50 ] || fatal "no /dev/vda although gpuconform.pydisk was given"
		sleep 0.1
	done
	mkdir -p /py
	mount -t ext4 -o ro /dev/vda /py || fatal "cannot mount the Python disk"
	for d in dev proc sys run tmp; do
		mount --rbind "/$d" "/py/$d" || fatal "cannot bind /$d into /py"
	done
	cat >/usr/bin/python3 <<'EOF'
#!/bin/sh
exec chroot /py /bin/sh -c 'cd "$0" 2>/dev/null || cd /; exec /usr/bin/python3 "$@"' "$PWD" "$@"
EOF
	chmod 0755 /usr/bin/python3
	log "python disk mounted"
fi

log "starting sshd after $(cut -d' ' -f1 /proc/uptime)s"
exec /usr/sbin/dropbear -F -E -s -g -j -k -p 22 -r /etc/dropbear/host_key
