#!/usr/bin/env bash
# Fetches Debian's cloud kernels for `netfault matrix` and unpacks them into the kernel cache
# (${NETFAULT_KERNELS:-/var/cache/netfault/kernels}/<release>/boot/vmlinuz-<release> and lib/modules/<release>/):
# apt-get download + dpkg-deb -x, never installed into /boot. Arguments: kernel lines (default: 6.1 6.12).
# Each line takes the newest release Debian's meta-package points to; one already in the cache is kept.
set -euo pipefail
cache="${NETFAULT_KERNELS:-/var/cache/netfault/kernels}"
lines=("$@")
[ ${#lines[@]} -gt 0 ] || lines=(6.1 6.12)

# The meta-package that depends on the newest image of a kernel line.
meta_package() {
  case "$1" in
    6.1) echo linux-image-cloud-amd64 ;;      # Debian 12's own kernel line
    *) echo "linux-image-$1-cloud-amd64" ;;   # other lines (6.12 from bookworm's updates)
  esac
}

mkdir -p "$cache"
updated=no
for line in "${lines[@]}"; do
  meta="$(meta_package "$line")"
  # A fresh machine's apt may not have read its archive's package lists yet.
  if ! apt-cache show "$meta" >/dev/null 2>&1 && [ "$updated" = no ] && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    updated=yes
  fi
  image="$(apt-cache depends "$meta" 2>/dev/null | sed -n "s/^ *Depends: \(linux-image-${line//./\\.}[.-][^ ]*-cloud-amd64\)$/\1/p" | head -n1)"
  if [ -z "$image" ]; then
    echo "ci/kernels.sh: no Debian package for kernel $line ($meta unknown to apt: run apt-get update, on Debian 12)" >&2
    exit 1
  fi
  release="${image#linux-image-}"
  if [ -f "$cache/$release/boot/vmlinuz-$release" ] && [ -d "$cache/$release/lib/modules/$release" ]; then
    echo "ci/kernels.sh: $release already in $cache"
    continue
  fi
  work="$(mktemp -d)"
  (cd "$work" && apt-get download -q "$image" >/dev/null 2>&1) || {
    echo "ci/kernels.sh: apt-get download $image failed" >&2
    rm -rf "$work"
    exit 1
  }
  rm -rf "$cache/$release.partial"
  dpkg-deb -x "$work"/*.deb "$cache/$release.partial"
  rm -rf "$work" "$cache/$release"
  mv "$cache/$release.partial" "$cache/$release"
  echo "ci/kernels.sh: $release unpacked into $cache/$release"
done
