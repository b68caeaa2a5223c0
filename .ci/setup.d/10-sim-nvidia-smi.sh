#!/usr/bin/env bash
# The simulated host's nvidia-smi: a dynamically linked ELF and its libnvidia-ml.so.1, built from
# fixtures/sim/simgpu/smi/*.c with the machine's C compiler into /var/cache/gpuconform/simgpu (keyed by
# the sources and the compiler, so rerunning is a no-op). SimHost.up builds it lazily too; this
# step makes a missing compiler fail setup instead of the first test. Idempotent; fails loudly.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v gcc >/dev/null && ! command -v cc >/dev/null; then
  echo "10-sim-nvidia-smi: no C compiler (apt-get install gcc libc6-dev)" >&2
  exit 1
fi
if [ ! -e /usr/include/stdio.h ]; then
  echo "10-sim-nvidia-smi: no C library headers (apt-get install libc6-dev)" >&2
  exit 1
fi
python3 -m gpuconform.fixtures.sim.simgpu.smi_build
