#!/usr/bin/env bash
# The Swift toolchain for ios_demo/, once per machine, then `swift build` of the package.
#
#   ios_demo/setup.sh                   make the chroot if needed, build the package inside it
#   ios_demo/setup.sh --toolchain-only  only the chroot
#
# Debian trixie's swiftlang 6.0.3 needs glibc 2.38, so it cannot run on this bookworm host directly: it lives in a
# trixie chroot under /opt/memwall/swift-trixie (MEMWALL_SWIFT_ROOT), made with debootstrap --variant=minbase from
# the mirror this machine's own apt sources name. Measured on this 2-core machine (2026-12-07): 2 min 46 s alone,
# 5 min 18 s beside other jobs, 2.7 GB; about 4 s (the swift build included) when up to date. Needs root (chroot,
# unshare); without it the script says so and exits 0, and tests/test_ios.py skips. ios_demo/swiftw runs swift
# commands inside the chroot.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${MEMWALL_SWIFT_ROOT:-/opt/memwall/swift-trixie}"
# Bump when the package list changes: an older chroot is then completed (not rebuilt) by apt-get.
PACKAGES="swiftlang libc6-dev libstdc++-14-dev"
STAMP="$ROOT/.memwall-ready"

# The first non-security Debian mirror in the machine's apt sources (deb822 .sources or one-line sources.list).
debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {if ($i !~ /security/ && $(i+1) !~ /security/) print $i; break}}' "$f"
  done
}

make_chroot() {
  local mirror
  # A mirror whose address names Debian first (the host may list others, e.g. a vendor's repository), else any.
  mirror="$(debian_mirror | grep -i debian | head -n 1)"
  [ -n "$mirror" ] || mirror="$(debian_mirror | head -n 1)"
  if [ -z "$mirror" ]; then
    echo "ios_demo/setup.sh: no Debian mirror in /etc/apt/sources.list(.d); add one (the chroot is made from it)" >&2
    exit 1
  fi
  if ! command -v debootstrap >/dev/null; then
    # ./dev test runs the toolchain scripts side by side: wait for another one's apt lock instead of failing.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >/dev/null
  fi
  if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    # Made beside its final place and renamed, so an interrupted run leaves no half chroot behind.
    rm -rf "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    debootstrap --variant=minbase trixie "$ROOT.partial" "$mirror"
    mv "$ROOT.partial" "$ROOT"
  fi
  echo "deb $mirror trixie main" >"$ROOT/etc/apt/sources.list"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null && apt-get clean"
  echo "$PACKAGES" >"$STAMP"
}

if [ "$(id -u)" != 0 ]; then
  # chroot and unshare need root; ./dev test then goes on and tests/test_ios.py skips with the reason.
  echo "ios_demo/setup.sh: not root, so no Swift chroot and no Swift build; run as root to build and test ios_demo/" >&2
  exit 0
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$PACKAGES" ]; then
  make_chroot
fi
[ "${1:-}" = --toolchain-only ] && exit 0
exec "$HERE/swiftw" build
