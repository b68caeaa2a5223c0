#!/usr/bin/env bash
# Podman's view of a simulated host's /dev for privileged containers (issue 11, failure class 2):
# a privileged sandbox gets every host device node, but the simulated GPUs' nodes live under the
# simulated host's directory, not in /dev. This installs an OCI hooks.d entry (Podman 4 reads
# /usr/share/containers/oci/hooks.d when containers.conf sets no hooks_dir) that runs
# fixtures/sim/simgpu/legacy_hook.py's `privileged` verb at prestart: for a privileged container
# holding a simulated GPU it adds every GPU of that simulated host; for any other container it does
# nothing. The wrapper exits 0 when the checkout has moved, so a stale entry never breaks a
# container start. Idempotent; fails loudly.
set -euo pipefail
cd "$(dirname "$0")/../.."

script="$(pwd)/fixtures/sim/simgpu/legacy_hook.py"
python=/usr/bin/python3
wrapper=/usr/local/libexec/gpuconform/sim-privileged-hook
entry=/usr/share/containers/oci/hooks.d/gpuconform-sim-privileged.json

[ -f "$script" ] || { echo "45-sim-privileged-hook: $script missing" >&2; exit 1; }
[ -x "$python" ] || { echo "45-sim-privileged-hook: $python missing (apt-get install python3)" >&2; exit 1; }
if grep -Eq '^[[:space:]]*hooks_dir[[:space:]]*=' /etc/containers/containers.conf 2>/dev/null; then
  echo "45-sim-privileged-hook: /etc/containers/containers.conf sets hooks_dir; add $(dirname "$entry") to it" >&2
  exit 1
fi

install -d -m 0755 "$(dirname "$wrapper")" "$(dirname "$entry")"
cat >"$wrapper.tmp" <<WRAPPER
#!/bin/sh
# Written by .ci/setup.d/45-sim-privileged-hook.sh: the simulated host's /dev for privileged containers.
[ -f '$script' ] || exit 0
exec '$python' -I -S '$script' privileged "\$@"
WRAPPER
chmod 0755 "$wrapper.tmp"
mv -f "$wrapper.tmp" "$wrapper"

cat >"$entry.tmp" <<JSON
{
  "version": "1.0.0",
  "hook": {"path": "$wrapper", "args": ["sim-privileged-hook"]},
  "when": {"always": true},
  "stages": ["prestart"]
}
JSON
mv -f "$entry.tmp" "$entry"
echo "45-sim-privileged-hook: $entry -> $wrapper"
