#!/usr/bin/env bash
# install.sh: makes every peer of the side-by-side benchmark runnable, on a
# fresh Debian machine as root (see README.md). Idempotent; quiet on
# success but for the versions it prints at the end.
#
#   * Node and npm (apt-get, when missing);
#   * `npm ci` here: Bun and ws at the versions of package-lock.json (skipped
#     when node_modules was installed from this very lock file and works);
#   * checks that node_modules/.bin/bun runs: Bun's binary comes from an
#     optional dependency (@oven/bun-linux-x64) and a postinstall script,
#     either of which can be skipped without npm failing;
#   * nginx and iperf3 (apt-get, when missing), run by the compare tool;
#   * `cargo build --release -p sluice-load --bins`, which builds
#     target/release/sluice-peer-fws (SKIP_BUILD=1 skips it).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUN=$HERE/node_modules/.bin/bun
STAMP=$HERE/node_modules/.sluice-peers-lock.sha256

die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

APT_UPDATED=
apt_install() {
    [ "$(id -u)" = 0 ] || die "missing $*: run as root, or apt-get install $*"
    if [ -z "$APT_UPDATED" ]; then
        apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi

bun_works() { "$BUN" --version >/dev/null 2>&1; }

LOCK_SUM=$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$LOCK_SUM" ] || ! bun_works; then
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || die "npm ci failed"
    if ! bun_works && [ -f "$HERE/node_modules/bun/install.js" ]; then
        # npm ran with scripts off (ignore-scripts): run Bun's postinstall,
        # which puts the platform binary in place of its placeholder.
        (cd "$HERE/node_modules/bun" && node install.js >/dev/null 2>&1) || true
    fi
    bun_works || die "$BUN does not run: Bun's binary is missing.
  It comes from the optional dependency @oven/bun-linux-x64 (x64 glibc
  Linux only), put in place by bun's postinstall script. Check that npm
  installs optional dependencies and runs scripts (npm config get omit,
  npm config get ignore-scripts), then rerun this script."
    printf '%s\n' "$LOCK_SUM" >"$STAMP"
fi

command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
command -v iperf3 >/dev/null || apt_install iperf3

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -q -p sluice-load --bins) || die "cargo build failed"
    [ -x "$ROOT/target/release/sluice-peer-fws" ] || die "no target/release/sluice-peer-fws after the build"
fi

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
printf 'bun %s\n' "$("$BUN" --version)"
printf 'node %s\n' "$(node --version)"
printf 'ws %s\n' "$(node -p 'require(process.argv[1]).version' "$HERE/node_modules/ws/package.json")"
printf '%s\n' "$("$NGINX" -v 2>&1 | sed 's|^nginx version: ||')"
printf '%s\n' "$(iperf3 --version | head -n1)"
