#!/usr/bin/env bash
# Build airbridge for a Raspberry Pi on a Debian 12 x86-64 machine, with Debian's packages
# only (no rustup target, no download besides apt and crates.io), and package it.
#
#   deploy/cross.sh [--target aarch64|armhf] [--no-deb]
#
#   aarch64 (default): 64-bit Raspberry Pi OS (Pi 3, 4, 5, Zero 2 W) -> arm64 .deb
#   armhf:             32-bit Raspberry Pi OS on ARMv7 and newer   -> armhf .deb
#
# Idempotent. Installs what is missing with apt (as root): rustc-web (Debian 12's current
# rustc, /usr/bin/rustc), the target's std (libstd-rust-web-dev:ARCH, the same version),
# the cross gcc as linker with the target's multiarch libc (libc6-dev:ARCH to link, libc6
# for qemu-user's -L /: the same glibc as the Pi's Debian 12) and qemu-user to run it.
# Builds from Cargo.lock (--locked), prints the binary and the .deb (target/debian/).
# The linker is set through the environment, so a normal `cargo build` is untouched.
# Exit status 3: apt could not install the packages (the other failures exit 1 or 2).
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64 deb=1
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target="${2:-}"; shift 2 ;;
    --target=*) target="${1#--target=}"; shift ;;
    --no-deb) deb=0; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "cross.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$target" in
  aarch64|arm64) triple=aarch64-unknown-linux-gnu arch=arm64 gnu=aarch64-linux-gnu ;;
  armhf|armv7) triple=armv7-unknown-linux-gnueabihf arch=armhf gnu=arm-linux-gnueabihf ;;
  *) echo "cross.sh: --target must be aarch64 or armhf, not $target" >&2; exit 2 ;;
esac

pkgs=(rustc-web "libstd-rust-web-dev:$arch" "gcc-$gnu" "binutils-$gnu" "libc6:$arch" "libc6-dev:$arch" qemu-user)
command -v cargo >/dev/null 2>&1 || pkgs+=(cargo-web)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "cross.sh: missing packages: ${missing[*]}; run as root (or install them) once" >&2
    exit 1
  fi
  dpkg --print-foreign-architectures | grep -qx "$arch" || dpkg --add-architecture "$arch"
  echo "== apt-get install ${missing[*]}" >&2
  # A mirror caught mid-sync fails `update` ("File has unexpected size"); it passes a little
  # later, so try three times before giving up.
  # If one index still fails, apt goes on with the others; install says whether that is enough.
  for try in 1 2 3; do
    apt-get update -qq && break
    [ "$try" = 3 ] && { echo "cross.sh: apt-get update failed three times; trying with the indexes it has" >&2; break; }
    echo "cross.sh: apt-get update failed; again in 30 s" >&2
    sleep 30
  done
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    echo "cross.sh: apt-get could not install ${missing[*]}" >&2
    exit 3
  }
fi

# Debian's rustc must satisfy Cargo.toml's rust-version, and its std for the target must be
# the same build (dpkg keeps Multi-Arch: same packages in step; this says so if not).
rustc_v="$(/usr/bin/rustc --version | awk '{print $2}')"
need_v="$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)"
if [ "$(printf '%s\n%s\n' "$need_v" "$rustc_v" | sort -V | head -1)" != "$need_v" ]; then
  echo "cross.sh: Debian's rustc is $rustc_v, Cargo.toml wants $need_v" >&2
  exit 1
fi
[ -d "/usr/lib/rustlib/$triple/lib" ] || { echo "cross.sh: no std for $triple in /usr/lib/rustlib" >&2; exit 1; }

linker_var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_LINKER"
echo "== cargo build --release --locked --target $triple (rustc $rustc_v from Debian)" >&2
env RUSTC=/usr/bin/rustc "$linker_var=$gnu-gcc" \
  nice cargo build --release --locked --target "$triple"
bin="target/$triple/release/airbridge"
echo "$bin"
if [ "$deb" = 1 ]; then
  deploy/mkdeb.sh --arch "$arch" --binary "$bin"
fi
