#!/usr/bin/env bash
# Installs what netfault needs on a Debian or Ubuntu machine, only what is missing. Run as root.
set -euo pipefail

packages=(
  pkg-config libnftnl-dev libmnl-dev   # build: the nftnl and mnl crates link against these
  nftables iproute2 ethtool tcpdump    # inspection tools used by tests and for reading reports
  curl netcat-openbsd socat            # real programs that exec steps run
  strace                               # exec steps with `trace: true` run their program under it
  tshark chromium fonts-dejavu-core    # report tests: tshark reads capture.pcapng, headless Chromium draws report.html
  qemu-system-x86 busybox-static xz-utils   # netfault matrix: VMs, their userland, compressed modules
  iptables                             # netfault bench impair: the NFQUEUE alternative (iptables-nft, xt compat)
  jq                                   # ci/check-kernel-differences.sh reads the matrix's result.json files
)
missing=()
for package in "${packages[@]}"; do
  # A Chromium already on PATH is used as it is (GitHub's Ubuntu images link one to /usr/bin/chromium). Ubuntu's
  # package of that name installs a snap, whose confinement keeps it from the report files and its /tmp profile.
  if [ "$package" = chromium ] && command -v chromium >/dev/null 2>&1; then
    continue
  fi
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ci/setup.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "ci/setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's kernels for `netfault matrix` (unpacked into a cache, never installed): only Debian has them.
bash "$(dirname "$0")/kernels.sh" || echo "ci/setup.sh: no kernels for netfault matrix (see above); the rest is set up" >&2
command -v cargo >/dev/null || { echo "ci/setup.sh: cargo not found; install Rust (rustup) first" >&2; exit 1; }
