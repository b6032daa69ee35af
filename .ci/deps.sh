#!/usr/bin/env bash
# Debian packages the build, the tests and the demo need; idempotent and quiet when all are there.
set -euo pipefail
PKGS=(
  python3 python3-venv python3-dev gcc pkg-config libsystemd-dev   # venv + systemd-python build
  systemd                                                          # systemd-journald, systemd-analyze
  systemd-journal-remote                                           # bench/logs peer
  debootstrap systemd-container                                    # booted-Debian E2E
  dpkg-dev lintian python3-systemd python3-zstandard python3-nacl               # .deb build and checks; the .deb's Depends
  zstd                                                             # reads a LogBatch with contracts/log-batch-1.zdict (a test)
  make git ca-certificates strace                                   # strace: the demo test proves it writes only its own dir
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
