#!/usr/bin/env bash
# Package a built airbridge binary as a .deb with dpkg-deb: the same contents and
# maintainer scripts as `cargo deb` makes from [package.metadata.deb] in Cargo.toml, for
# any architecture (the cross builds of deploy/cross.sh included), without cargo-deb.
#
#   deploy/mkdeb.sh --arch arm64 --binary target/aarch64-unknown-linux-gnu/release/airbridge
#
# Writes target/debian/airbridge_<version>_<arch>.deb (name and version from Cargo.toml)
# and prints its path. Needs dpkg-deb and the target's binutils for `readelf` (any
# readelf reads any ELF; binutils is enough).
set -euo pipefail
cd "$(dirname "$0")/.."

arch="" binary="" out="target/debian" compress=(-Zxz)
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;   # for tests: quick, larger
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "mkdeb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$arch" ] && [ -n "$binary" ] || { echo "mkdeb.sh: --arch and --binary are required" >&2; exit 2; }
[ -x "$binary" ] || { echo "mkdeb.sh: $binary is not an executable" >&2; exit 1; }

# Name, version, description and the deb metadata: from Cargo.toml, the one source.
# A [package] field, or the [workspace.package] one it inherits (`version.workspace = true`).
field() {
  local v
  v="$(sed -n "/^\[package\]/,/^\[/s/^$1 *= *\"\(.*\)\"/\1/p" Cargo.toml | head -1)"
  [ -n "$v" ] || v="$(sed -n "/^\[workspace.package\]/,/^\[/s/^$1 *= *\"\(.*\)\"/\1/p" Cargo.toml | head -1)"
  echo "$v"
}
debfield() { sed -n "/^\[package.metadata.deb\]/,/^\[/s/^$1 *= *\"\(.*\)\"/\1/p" Cargo.toml | head -1; }
name="$(field name)"
version="$(field version)"
summary="$(field description)"
license="$(field license)"
maintainer="$(debfield maintainer)"
copyright="$(debfield copyright)"
section="$(debfield section)"
priority="$(debfield priority)"
extended="$(debfield extended-description)"
# Debian wants a synopsis under 80 characters: the description up to its colon when the
# whole is longer; the whole then opens the extended description.
synopsis="$summary"
if [ ${#summary} -ge 80 ]; then
  synopsis="${summary%%:*}"
  extended="$summary. $extended"
fi

# Depends ("$auto, passwd" in Cargo.toml): the shared libraries the binary needs, at the
# newest glibc symbol version it uses, as dpkg-shlibdeps would compute for libc6.
readelf_bin="$(command -v readelf || true)"
[ -n "$readelf_bin" ] || { echo "mkdeb.sh: readelf (binutils) is needed" >&2; exit 1; }
needed="$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
glibc="$(readelf -V -W "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
depends=""
for lib in $needed; do
  case "$lib" in
    libc.so.6|libm.so.6|libdl.so.2|libpthread.so.0|librt.so.1|ld-linux*) dep="libc6 (>= $glibc)" ;;
    libgcc_s.so.1) dep="libgcc-s1 (>= 4.2)" ;;
    *) echo "mkdeb.sh: $binary needs $lib, which this script does not map to a package" >&2; exit 1 ;;
  esac
  case ", $depends, " in *", $dep, "*) ;; *) depends="${depends:+$depends, }$dep" ;; esac
done
depends="${depends:+$depends, }passwd"

# Reproducible timestamps (the last commit's), used for the changelog and the files.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
doc="$root/usr/share/doc/$name"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/etc/$name/profiles" "$doc" "$root/lib/systemd/system"
# Stripped like cargo-deb does (the release profile already drops debug info).
case "$arch" in
  arm64) strip_bin=aarch64-linux-gnu-strip ;;
  armhf) strip_bin=arm-linux-gnueabihf-strip ;;
  *) strip_bin=strip ;;
esac
install -m 755 "$binary" "$root/usr/bin/$name"
if command -v "$strip_bin" >/dev/null 2>&1; then
  "$strip_bin" --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/$name"
fi
install -m 644 gateway.yaml "$root/etc/$name/gateway.yaml"
install -m 644 profiles/*.yaml "$root/etc/$name/profiles/"
install -m 644 README.md "$doc/README.md"
install -d "$doc/docs"
install -m 644 docs/*.md "$doc/docs/"
install -m 644 deploy/airbridge.service "$root/lib/systemd/system/$name.service"
install -d "$root/usr/share/man/man1"
gzip -9n < deploy/airbridge.1 > "$root/usr/share/man/man1/$name.1.gz"
chmod 644 "$root/usr/share/man/man1/$name.1.gz"
# A native package's changelog (lintian: no-changelog): this version, from this commit.
when="$(date -u -R -d "@${SOURCE_DATE_EPOCH}")"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
printf '%s (%s) stable; urgency=medium\n\n  * Built from commit %s; see README.md.\n\n -- %s  %s\n' \
  "$name" "$version" "$commit" "$maintainer" "$when" | gzip -9n > "$doc/changelog.gz"
chmod 644 "$doc/changelog.gz"
cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: $name

Files: *
Copyright: $(date -u -d "@${SOURCE_DATE_EPOCH}" +%Y) $copyright
License: $license
EOF
chmod 644 "$doc/copyright"

# Every file under /etc is a conffile (Debian policy 10.7.2); gateway.yaml is the one
# Cargo.toml names, the register profiles under /etc are conffiles the same way.
(cd "$root" && find etc -type f | sort | sed 's|^|/|') > "$root/DEBIAN/conffiles"

# The maintainer scripts: deploy/debian/postinst with #DEBHELPER# filled in as cargo-deb
# does for `systemd-units = { enable = false, start = false }`: the unit is known to
# systemd after install, never enabled or started by the package, stopped and cleaned up
# on removal.
systemd_postinst="$(cat <<'EOF'
# systemd (enable = false, start = false): make the unit known, do not enable or start it.
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper unmask 'airbridge.service' >/dev/null || true
		deb-systemd-helper update-state 'airbridge.service' >/dev/null || true
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
	fi
fi
EOF
)"
awk -v snippet="$systemd_postinst" '$0 == "#DEBHELPER#" { print snippet; next } { print }' \
  deploy/debian/postinst > "$root/DEBIAN/postinst"
cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# systemd: stop the unit (if it runs) before its binary goes away.
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	deb-systemd-invoke stop 'airbridge.service' >/dev/null || true
fi
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
# systemd: forget the unit; on purge also its enablement state.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "purge" ]; then
	if command -v deb-systemd-helper >/dev/null 2>&1; then
		deb-systemd-helper purge 'airbridge.service' >/dev/null || true
		deb-systemd-helper unmask 'airbridge.service' >/dev/null || true
	fi
fi
EOF
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs md5sum) \
  > "$root/DEBIAN/md5sums"
installed_kb="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_kb
Depends: $depends
Section: $section
Priority: $priority
Description: $synopsis
$(printf '%s\n' "$extended" | fold -s -w 79 | sed 's/ *$//; s/^/ /')
EOF

mkdir -p "$out"
deb="$out/${name}_${version}_${arch}.deb"
# Root-owned files whoever builds (as cargo-deb does), reproducible timestamps.
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
