#!/usr/bin/env bash
# Checks the .deb that scripts/package.sh built, loudly: every file the package must carry, the
# conffile, the unit's ExecStart pointing at the packaged binary, `systemd-analyze verify` on the
# packaged unit, and what the postinst does (the credentials directory 0700; the service neither
# enabled nor started). As root (CI), it installs the package for real, checks the installed
# system, then purges it; otherwise it checks an unpacked copy.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

fail() { echo "check-package: FAILED: $*" >&2; exit 1; }

deb=$(ls -t "$target"/debian/smartcar-sync_*.deb 2>/dev/null | head -1 || true)
[ -n "$deb" ] || fail "no package in $target/debian (run scripts/package.sh)"
echo "check-package: $deb ($(stat -c %s "$deb") bytes)"

listing=$(dpkg-deb -c "$deb")
missing=()
for path in \
    ./usr/bin/smartcar-sync \
    ./lib/systemd/system/smartcar-sync.service \
    ./etc/smartcar-sync/config.toml \
    ./usr/share/doc/smartcar-sync/README.md \
    ./usr/share/doc/smartcar-sync/copyright \
    ./usr/share/man/man1/smartcar-sync.1.gz \
    ./usr/share/man/man1/smartcar-sync-status.1.gz \
    ./usr/share/man/man1/smartcar-sync-jobs-retry.1.gz \
    ./usr/share/man/man1/smartcar-sync-jobs-cancel.1.gz \
    ./usr/share/bash-completion/completions/smartcar-sync \
    ./usr/share/zsh/vendor-completions/_smartcar-sync \
    ./usr/share/fish/vendor_completions.d/smartcar-sync.fish; do
    grep -q " ${path}\$" <<<"$listing" || missing+=("$path")
done
[ ${#missing[@]} -eq 0 ] || fail "missing from the package: ${missing[*]}"
grep -q '^-rwxr-xr-x .* ./usr/bin/smartcar-sync$' <<<"$listing" || fail "/usr/bin/smartcar-sync is not 0755"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -e "$deb" "$work/control"
grep -qx /etc/smartcar-sync/config.toml "$work/control/conffiles" \
    || fail "/etc/smartcar-sync/config.toml is not a conffile"
for script in postinst prerm postrm; do
    [ -x "$work/control/$script" ] || fail "no executable $script"
done
# Never start (nor enable) a service that has no credentials yet.
if grep -vE '^\s*(#|echo|")' "$work/control/postinst" \
    | grep -qE 'systemctl (--[a-z-]+ )*(start|enable|restart)\b|deb-systemd-invoke (start|restart)'; then
    fail "the postinst starts or enables the service"
fi

dpkg-deb -x "$deb" "$work/root"
unit="$work/root/lib/systemd/system/smartcar-sync.service"
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
[ "$exec_start" = /usr/bin/smartcar-sync ] || fail "ExecStart runs $exec_start, not /usr/bin/smartcar-sync"
"$work/root/usr/bin/smartcar-sync" --version >/dev/null || fail "the packaged binary does not run"
for f in "$work"/root/usr/share/man/man1/*.gz; do
    gzip -t "$f" || fail "$f is not gzip"
done
zcat "$work/root/usr/share/man/man1/smartcar-sync.1.gz" | grep -q 'jobs' \
    || fail "the man page does not mention the jobs command"

if [ "$(id -u)" = 0 ] && [ "${CHECK_PACKAGE_INSTALL:-1}" = 1 ]; then
    # The real thing: install, look, purge.
    command -v systemd-analyze >/dev/null || fail "systemd-analyze is missing"
    DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >"$work/dpkg.log" 2>&1 \
        || { cat "$work/dpkg.log" >&2; fail "dpkg -i failed"; }
    trap 'dpkg --purge smartcar-sync >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
    [ "$(stat -c %a /etc/smartcar-sync/credentials)" = 700 ] \
        || fail "/etc/smartcar-sync/credentials is not 0700"
    systemd-analyze verify /lib/systemd/system/smartcar-sync.service \
        || fail "systemd-analyze verify rejects the installed unit"
    if [ -d /run/systemd/system ]; then
        ! systemctl is-active --quiet smartcar-sync || fail "the package started the service"
        ! systemctl is-enabled --quiet smartcar-sync || fail "the package enabled the service"
    fi
    /usr/bin/smartcar-sync --version >/dev/null || fail "the installed binary does not run"
    # (Minimal images may exclude /usr/share/man from installs: then there is nothing to find.)
    if [ -e /usr/share/man/man1/smartcar-sync-status.1.gz ] && command -v man >/dev/null; then
        man -w smartcar-sync-status >/dev/null 2>&1 || fail "man does not find smartcar-sync-status"
    fi
    dpkg --purge smartcar-sync >"$work/dpkg.log" 2>&1 \
        || { cat "$work/dpkg.log" >&2; fail "dpkg --purge failed"; }
    [ ! -e /etc/smartcar-sync/credentials ] || fail "purge left the credentials"
    [ ! -e /usr/bin/smartcar-sync ] || fail "purge left the binary"
    echo "check-package: installed, verified and purged"
else
    # Unpacked: the postinst against the unpacked tree, the unit with ExecStart pointing there.
    DPKG_ROOT="$work/root" "$work/control/postinst" configure "" >/dev/null
    [ "$(stat -c %a "$work/root/etc/smartcar-sync/credentials")" = 700 ] \
        || fail "the postinst did not create the credentials directory 0700"
    sed "s#^ExecStart=/usr/bin/smartcar-sync#ExecStart=$work/root/usr/bin/smartcar-sync#" \
        "$unit" >"$work/smartcar-sync.service"
    systemd-analyze verify "$work/smartcar-sync.service" \
        || fail "systemd-analyze verify rejects the packaged unit"
    echo "check-package: unpacked and verified (run as root to install it too)"
fi
echo "check-package: OK"
