#!/bin/sh
# Install airbridge: the binary, /etc/airbridge/gateway.yaml (never overwritten),
# /etc/airbridge/profiles/*.yaml, the systemd unit and the `airbridge` system user.
# Idempotent: run it again after an upgrade; what is already in place is left alone.
#
#   deploy/install.sh [--dry-run] [--root DIR] [--prefix /usr/local] [--binary PATH]
#
#   --dry-run      print what would be done, change nothing
#   --root DIR     install below DIR (like DESTDIR): no user is created, systemd is not told
#   --prefix P     the binary goes to P/bin (default /usr/local); the unit's ExecStart follows
#   --binary PATH  the binary to install (default target/release/airbridge)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
dry=0
root=${DESTDIR:-}
prefix=/usr/local
binary=$repo/target/release/airbridge

while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1 ;;
    --root) root=${2:?--root needs a directory}; shift ;;
    --root=*) root=${1#--root=} ;;
    --prefix) prefix=${2:?--prefix needs a path}; shift ;;
    --prefix=*) prefix=${1#--prefix=} ;;
    --binary) binary=${2:?--binary needs a path}; shift ;;
    --binary=*) binary=${1#--binary=} ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
root=${root%/}
case $prefix in /*) ;; *) echo "install.sh: --prefix must be absolute" >&2; exit 2 ;; esac

say() { printf '%s\n' "$*"; }
# Run a command, or only show it with --dry-run.
act() {
  if [ "$dry" = 1 ]; then say "would run: $*"; else say "run: $*"; "$@"; fi
}

if [ ! -x "$binary" ]; then
  if [ "$dry" = 1 ]; then
    say "note: $binary does not exist yet (cargo build --release)"
  else
    echo "install.sh: $binary not found; build it first: cargo build --release" >&2
    exit 1
  fi
fi

bindir=$prefix/bin
etc=/etc/airbridge
unitdir=/etc/systemd/system

# install_file SRC DEST MODE [SHOWN]: copy unless DEST already has the same content and
# mode. SHOWN names the source in messages when SRC is a temporary file.
install_file() {
  if [ -f "$root$2" ] && cmp -s "$1" "$root$2" \
     && [ "$(stat -c %a "$root$2")" = "$3" ]; then
    say "unchanged: $2"
  elif [ -n "${4:-}" ]; then
    if [ "$dry" = 1 ]; then
      say "would run: install -D -m $3 $4 $root$2"
    else
      say "run: install -D -m $3 $4 $root$2"
      install -D -m "$3" "$1" "$root$2"
    fi
  else
    act install -D -m "$3" "$1" "$root$2"
  fi
}

# 1. The binary.
install_file "$binary" "$bindir/airbridge" 755

# 2. The config: never overwritten.
if [ -e "$root$etc/gateway.yaml" ]; then
  say "kept: $etc/gateway.yaml (exists; the shipped default is $repo/gateway.yaml)"
else
  act install -D -m 644 "$repo/gateway.yaml" "$root$etc/gateway.yaml"
fi

# 3. Register profiles (the config names them relative to itself: profiles/ksem-g2.yaml).
for p in "$repo"/profiles/*.yaml; do
  name=$(basename "$p")
  dest=$etc/profiles/$name
  if [ -e "$root$dest" ] && ! cmp -s "$p" "$root$dest"; then
    say "kept: $dest (edited locally; the shipped one is $p)"
  else
    install_file "$p" "$dest" 644
  fi
done

# 4. The documentation the unit's Documentation= names (README and docs/).
docdir=$prefix/share/doc/airbridge
install_file "$repo/README.md" "$docdir/README.md" 644
for d in "$repo"/docs/*.md; do
  install_file "$d" "$docdir/docs/$(basename "$d")" 644
done

# 5. The unit, with ExecStart and Documentation= pointing at what was installed.
unit_tmp=$(mktemp)
trap 'rm -f "$unit_tmp"' EXIT
sed -e "s#/usr/bin/airbridge#$bindir/airbridge#g" \
    -e "s#file:/usr/share/doc/airbridge/#file:$docdir/#g" \
    "$here/airbridge.service" > "$unit_tmp"
install_file "$unit_tmp" "$unitdir/airbridge.service" 644 \
  "$here/airbridge.service (ExecStart: $bindir/airbridge, Documentation: $docdir/README.md)"

# 6. The user, in group dialout (only when installing onto this machine).
if [ -n "$root" ]; then
  say "skipped: user airbridge (--root: create it on the target: useradd --system --user-group --groups dialout --no-create-home --shell /usr/sbin/nologin airbridge)"
elif id airbridge >/dev/null 2>&1; then
  if id -nG airbridge | tr ' ' '\n' | grep -qx dialout; then
    say "unchanged: user airbridge (in dialout)"
  else
    act usermod -a -G dialout airbridge
  fi
else
  act useradd --system --user-group --groups dialout --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin airbridge
fi

# 7. Tell systemd, check the config.
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  act systemctl daemon-reload
else
  say "skipped: systemctl daemon-reload (no running systemd here${root:+, or --root})"
fi
if [ "$dry" = 0 ]; then
  "$root$bindir/airbridge" check --config "$root$etc/gateway.yaml" >/dev/null \
    && say "config: $etc/gateway.yaml is usable" \
    || say "config: $etc/gateway.yaml needs editing: airbridge check --config $etc/gateway.yaml"
fi
say "next, in this order (README \"Configure the KSEM\" and \"Configure, enable, watch\"):"
say "  1. set up the KSEM's Modbus TCP slave and its Modbus TCP master target (this machine, port 5020)"
say "  2. sudoedit $etc/gateway.yaml; airbridge check --config $etc/gateway.yaml"
say "  3. sudo systemctl enable --now --no-block airbridge   (--no-block: ready only once the KSEM delivered)"
say "  4. systemctl status airbridge; journalctl -u airbridge -f"
