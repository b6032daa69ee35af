#!/bin/bash
# Build dist/harmony-agent_<version>_<arch>.deb with Debian's own tools.
#
#   packaging/deb/build.sh                  # or: make deb [ARCH=arm64] [VERSION=...] [SRC=...]
#
# Environment (all optional):
#   ARCH     amd64 (default) or arm64; wheels for the target come from PyPI,
#            so building arm64 on amd64 needs no emulation.
#   VERSION  package and agent version; default: __version__ of SRC/agent/version.py.
#            When it differs, the release's agent/version.py is rewritten, so the
#            agent reports the version it was packaged as.
#   SRC      source tree holding agent/, harmony_core/ and agent.example.toml (default: .).
#   OUT      output directory (default: dist).
#   PYTHON   a Python 3.11+ with pip, used only to fetch wheels (default: python3).
#   SOURCE_DATE_EPOCH  timestamp of every file; default: the last commit of
#            SRC, else a fixed date. Same inputs + same SOURCE_DATE_EPOCH =
#            the same bytes.
#
# Layout produced (see docs/packaging.md):
#   /opt/harmony-agent/releases/<version>/   agent + locked dependencies, `.complete` last
#   /usr/bin/harmony-agent   the launcher (runs `current`); harmony-fleet is not on devices
#   /lib/systemd/system/harmony-agent*.{service,path,timer}
#   /etc/harmony-agent/agent.toml (conffile), /etc/harmony-agent/keys/
set -euo pipefail
umask 022
export LC_ALL=C.UTF-8 TZ=UTC

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PKG_ROOT=$(cd "$HERE/../.." && pwd)
ARCH=${ARCH:-amd64}
SRC=$(cd "${SRC:-.}" && pwd)
OUT=${OUT:-dist}
PYTHON=${PYTHON:-python3}
PACKAGE=harmony-agent

die() { echo "build.sh: $*" >&2; exit 1; }

case "$ARCH" in
    amd64) PLATFORM=manylinux2014_x86_64 ;;
    arm64) PLATFORM=manylinux2014_aarch64 ;;
    *) die "ARCH must be amd64 or arm64, not '$ARCH'" ;;
esac
[ -f "$SRC/agent/version.py" ] || die "$SRC has no agent/version.py (set SRC= to a checkout)"
SRC_VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/agent/version.py")
VERSION=${VERSION:-$SRC_VERSION}
# A release version (harmony_core/versions.py, the same pattern): a native package, so
# no Debian revision ('-') and no epoch; a pre-release is 1.5.0~rc.1 (before 1.5.0).
[[ "$VERSION" =~ ^[0-9][A-Za-z0-9.+~]{0,127}$ ]] ||
    die "VERSION '$VERSION' is not a Debian native version like 1.4.0 or 1.5.0~rc.1 (see docs/upgrade.md)"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$SRC" log -1 --format=%ct 2>/dev/null || true)
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}  # 2024-01-01T00:00:00Z
fi
export SOURCE_DATE_EPOCH

WORK=$(mktemp -d "${TMPDIR:-/tmp}/harmony-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
RELEASE_PATH=/opt/harmony-agent/releases/$VERSION
REL=$ROOT$RELEASE_PATH
DOC=$ROOT/usr/share/doc/$PACKAGE
mkdir -p "$REL" "$ROOT/DEBIAN" "$ROOT/usr/bin" "$ROOT/lib/systemd/system" \
    "$ROOT/etc/harmony-agent/keys" "$DOC" "$ROOT/usr/share/lintian/overrides"

# 1. The locked dependencies, as wheels for the target (never built here).
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    # Debian's python3 has no pip: a throwaway venv has (needs python3-venv).
    python3 -m venv "$WORK/venv" || die "$PYTHON has no pip, and python3 -m venv failed"
    PYTHON=$WORK/venv/bin/python
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore \
    --target "$REL" --no-compile --no-deps --require-hashes \
    --only-binary=:all: --platform "$PLATFORM" \
    --python-version 3.11 --implementation cp --abi cp311 \
    -r "$HERE/requirements.lock"
# Console scripts would carry the build machine's interpreter path.
rm -rf "$REL/bin"
# Pure-Python packages PyPI has only as sdists (nkeys): the hash-pinned source's
# package directory, copied as is (nothing is built).
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
    --require-hashes -r "$HERE/requirements-sdist.lock" -d "$WORK/sdist"
tar -xzf "$WORK/sdist/nkeys-0.2.1.tar.gz" -C "$WORK/sdist"
cp -r "$WORK/sdist/nkeys-0.2.1/nkeys" "$REL/nkeys"

# 2. The agent itself, from the source tree.
# The device package: the agent and the shared core; never the operator side (harmony_fleet).
(cd "$SRC" && find agent harmony_core \( -name '*.py' -o -name 'py.typed' \) -type f) | sort |
    while read -r f; do install -D -m 0644 "$SRC/$f" "$REL/$f"; done
if [ "$VERSION" != "$SRC_VERSION" ]; then
    sed -i "s/^__version__ = \".*\"$/__version__ = \"$VERSION\"/" "$REL/agent/version.py"
fi
grep -qx "__version__ = \"$VERSION\"" "$REL/agent/version.py" || die "version not set in release"

# No bytecode in a release: it stays byte-identical to what was built.
find "$REL" -depth \( -name __pycache__ -o -name '*.pyc' \) -exec rm -rf {} +

# 3. Launchers, units, config, docs.
for prog in harmony-agent:agent.cli; do
    name=${prog%%:*}
    sed -e "s|@PROG@|$name|g" -e "s|@MODULE@|${prog#*:}|g" -e "s|@VERSION@|$VERSION|g" \
        "$PKG_ROOT/packaging/bin/launcher.sh.in" > "$ROOT/usr/bin/$name"
done
ENABLE_UNITS=
for unit in "$PKG_ROOT"/packaging/systemd/harmony-agent*.service \
            "$PKG_ROOT"/packaging/systemd/harmony-agent*.path \
            "$PKG_ROOT"/packaging/systemd/harmony-agent*.timer; do
    [ -f "$unit" ] || continue
    cp "$unit" "$ROOT/lib/systemd/system/"
    # Like dh_installsystemd: units with an [Install] section get enabled and started.
    if grep -q '^\[Install\]' "$unit"; then ENABLE_UNITS="$ENABLE_UNITS $(basename "$unit")"; fi
done
ENABLE_UNITS=${ENABLE_UNITS# }
[ -f "$ROOT/lib/systemd/system/harmony-agent.service" ] || die "packaging/systemd/harmony-agent.service missing"

if [ -f "$SRC/agent.example.toml" ]; then
    cp "$SRC/agent.example.toml" "$ROOT/etc/harmony-agent/agent.toml"
else
    cp "$HERE/agent.minimal.toml" "$ROOT/etc/harmony-agent/agent.toml"
fi

cp "$HERE/copyright" "$DOC/copyright"
for doc in packaging.md upgrade.md; do
    if [ -f "$PKG_ROOT/docs/$doc" ]; then cp "$PKG_ROOT/docs/$doc" "$DOC/$doc"; fi
done
DATE_R=$(date -u -d "@$SOURCE_DATE_EPOCH" -R)
printf '%s (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- %s  %s\n' \
    "$PACKAGE" "$VERSION" "$VERSION" "$(sed -n 's/^Maintainer: //p' "$HERE/control.in")" "$DATE_R" |
    gzip -9n > "$DOC/changelog.gz"
cp "$HERE/lintian-overrides" "$ROOT/usr/share/lintian/overrides/$PACKAGE"

# 4. Maintainer scripts and control files.
for script in postinst prerm postrm; do
    sed -e "s|@VERSION@|$VERSION|g" -e "s|@ENABLE_UNITS@|$ENABLE_UNITS|g" \
        "$HERE/$script" > "$ROOT/DEBIAN/$script"
done
echo /etc/harmony-agent/agent.toml > "$ROOT/DEBIAN/conffiles"

# 5. Normalise: modes, then the completeness marker (last file written), then mtimes.
find "$ROOT" -type d -exec chmod 0755 {} +
find "$ROOT" -type f -exec chmod 0644 {} +
chmod 0755 "$ROOT"/usr/bin/* "$ROOT"/DEBIAN/postinst "$ROOT"/DEBIAN/prerm "$ROOT"/DEBIAN/postrm
chmod 0640 "$ROOT/etc/harmony-agent/agent.toml"  # group harmony-agent is set by postinst
printf '{"schema_version": 1, "version": "%s", "arch": "%s"}\n' "$VERSION" "$ARCH" > "$REL/.complete"
chmod 0644 "$REL/.complete"

INSTALLED_SIZE=$(find "$ROOT" -path "$ROOT/DEBIAN" -prune -o -type f -printf '%s\n' |
    awk '{ kib += int(($1 + 1023) / 1024) } END { print kib + 0 }')
sed -e "s|@VERSION@|$VERSION|g" -e "s|@ARCH@|$ARCH|g" -e "s|@INSTALLED_SIZE@|$INSTALLED_SIZE|g" \
    "$HERE/control.in" > "$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) > "$ROOT/DEBIAN/md5sums"
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/md5sums" "$ROOT/DEBIAN/conffiles"
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$OUT"
DEB=$OUT/${PACKAGE}_${VERSION}_${ARCH}.deb
# dpkg-deb sorts members and honours SOURCE_DATE_EPOCH; one xz thread keeps
# the compressed bytes independent of the build machine's core count.
dpkg-deb --root-owner-group -Zxz --threads-max=1 --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
