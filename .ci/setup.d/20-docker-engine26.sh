#!/usr/bin/env bash
# Docker Engine 26 (Debian 13's docker.io 26.1.5) unpacked into a directory of ours, for the
# docker-cdi column: a private daemon with CDI on runs beside the system's Engine 20.10.
# The package file is fetched with a private apt configuration (trixie sources under our cache),
# so the system's apt sources, its installed packages and its dockerd are never touched.
# containerd, runc and docker-init (tini) come from the system's docker.io 20.10 and its
# dependencies. Idempotent; fails loudly.
set -euo pipefail

BASE=/var/cache/gpuconform
APT="$BASE/apt13"
DEST="${GPUCONFORM_DOCKER26_ROOT:-$BASE/docker26/root}"
WANT_MAJOR=26

have() {
  [ -x "$DEST/usr/sbin/dockerd" ] && [ -x "$DEST/usr/sbin/docker-proxy" ] || return 1
  local v
  v=$("$DEST/usr/sbin/dockerd" --version 2>/dev/null) || return 1
  [[ "$v" == "Docker version $WANT_MAJOR."* ]]
}

if have; then
  echo "docker engine $WANT_MAJOR already at $DEST: $("$DEST/usr/sbin/dockerd" --version)"
  exit 0
fi

for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || { echo "20-docker-engine26: $tool is missing (Debian/Ubuntu only)" >&2; exit 1; }
done
for dep in containerd runc docker-init; do
  command -v "$dep" >/dev/null || { echo "20-docker-engine26: $dep is missing: apt-get install -y docker.io" >&2; exit 1; }
done
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || { echo "20-docker-engine26: $KEYRING is missing: apt-get install -y debian-archive-keyring" >&2; exit 1; }

mkdir -p "$APT/etc" "$APT/lists/partial" "$APT/cache/archives/partial"
printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
  "$KEYRING" > "$APT/etc/trixie.sources"
O=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$APT/etc"
   -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "APT::Sandbox::User=root")

timeout 300 apt-get "${O[@]}" update -qq
rm -f "$APT"/docker.io_*.deb
(cd "$APT" && timeout 600 apt-get "${O[@]}" download docker.io)
debs=("$APT"/docker.io_*.deb)
[ -f "${debs[0]}" ] || { echo "20-docker-engine26: apt-get download docker.io gave no package file" >&2; exit 1; }

tmp="$DEST.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
dpkg -x "${debs[0]}" "$tmp"
for bin in usr/sbin/dockerd usr/sbin/docker-proxy; do
  [ -x "$tmp/$bin" ] || { echo "20-docker-engine26: ${debs[0]} has no $bin" >&2; rm -rf "$tmp"; exit 1; }
done
version=$("$tmp/usr/sbin/dockerd" --version) || { echo "20-docker-engine26: the unpacked dockerd does not run here" >&2; rm -rf "$tmp"; exit 1; }
[[ "$version" == "Docker version $WANT_MAJOR."* ]] || {
  echo "20-docker-engine26: expected engine $WANT_MAJOR, trixie gave: $version" >&2; rm -rf "$tmp"; exit 1; }
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$tmp" "$DEST"
echo "docker engine $WANT_MAJOR unpacked to $DEST: $version"
