#!/bin/sh
# End to end through the installed units, under a real systemd as PID 1:
# boot a minimal Debian in systemd-nspawn, install bpftokend there with
# scripts/install, enable the socket, and mint as an ordinary user; check
# socket activation, the journal's BPFTOKEN_* fields, the metrics file,
# reload and STATUS.
#
#   tests/nspawn/run.sh [ROOTFS]     (root; default ROOTFS /var/tmp/bpftokend-nspawn)
#
# Needs systemd-container and debootstrap; the Debian mirror comes from the
# system's apt sources (tests/nspawn/lib.sh boots the container). Exits
# non-zero on any failure.
set -eu
cd "$(dirname "$0")/../.."
root=${1:-/var/tmp/bpftokend-nspawn}
. tests/nspawn/lib.sh

# libelf1: bpftokend links libbpf (its BPF LSM enforcer's loader); a root
# made before that is rebuilt.
nspawn_rootfs "$root" systemd,systemd-sysv,dbus,libelf1,zlib1g
# The same libc as the host (same suite), so the host's build runs there.
cargo build --release --locked -p bpftokend -p bpftoken -p bpftoken-capi >/dev/null 2>&1
rm -rf "$root/opt/bpftokend" && mkdir -p "$root/opt/bpftokend"
cp -r Cargo.toml scripts systemd examples docs capi "$root/opt/bpftokend/"
mkdir -p "$root/opt/bpftokend/target/release"
release=${CARGO_TARGET_DIR:-target}/release
cp "$release/bpftokend" "$release/bpftoken" "$release/libbpftoken.so" "$root/opt/bpftokend/target/release/"
chroot "$root" sh -c 'id tokenuser >/dev/null 2>&1 || useradd -m tokenuser; getent group bpftoken >/dev/null || groupadd --system bpftoken; usermod -a -G bpftoken tokenuser'
rm -f "$root/etc/bpftokend/policy.toml"

nspawn_boot "$root" bpftokend-test

inside sh -c 'cd /opt/bpftokend && scripts/install' >/dev/null
# The C library is in ld.so's cache under its soname.
inside ldconfig -p | grep -q 'libbpftoken.so.0 '
inside systemctl is-active bpftokend.socket
# Not running yet: the first connection starts it.
if inside systemctl is-active --quiet bpftokend.service; then echo "the service ran before any connection" >&2; exit 1; fi
out=$(inside setpriv --reuid tokenuser --regid tokenuser --init-groups -- bpftoken run --maps array -- sh -c 'echo token=$BPF_TOKEN_FD')
case "$out" in token=[0-9]*) ;; *) echo "mint failed: $out" >&2; exit 1 ;; esac
inside systemctl is-active bpftokend.service
# An ordinary user outside the policy is refused, and the journal says so
# with structured fields.
inside useradd -m outsider 2>/dev/null || true
if inside setpriv --reuid outsider --regid outsider --init-groups -- bpftoken run -- true 2>/dev/null; then
    echo "a user outside the policy got a token" >&2; exit 1
fi
sleep 1
inside journalctl -q --no-pager BPFTOKEN_DECISION=granted BPFTOKEN_MODE=libbpf -o cat | grep -q "granted libbpf to uid" \
    || { echo "no granted event in the journal" >&2; inside journalctl -q --no-pager -u bpftokend.service >&2; exit 1; }
inside journalctl -q --no-pager BPFTOKEN_DECISION=refused BPFTOKEN_CODE=not_in_policy -o cat | grep -q "refused uid" \
    || { echo "no refused event in the journal" >&2; inside journalctl -q --no-pager -u bpftokend.service >&2; exit 1; }
# The metrics file next to the socket (writable under ProtectSystem=strict
# through ReadWritePaths=), 0644 under UMask=0077, refreshed every 2 s.
metrics=/run/bpftokend/metrics.prom
counted() { inside grep -qx 'bpftokend_grants_total{mode="libbpf"} 1' $metrics 2>/dev/null \
    && inside grep -qx 'bpftokend_refusals_total{code="not_in_policy"} 1' $metrics; }
for _ in $(seq 50); do counted && break; sleep 0.2; done
counted || { echo "$metrics is missing or did not count the grant and the refusal" >&2; inside cat $metrics >&2 || true
    inside journalctl -q --no-pager -u bpftokend.service >&2; exit 1; }
[ "$(inside stat -c '%a %U' $metrics)" = "644 root" ] || { echo "$metrics is not 0644 root" >&2; exit 1; }
# Reload through systemd: READY again with the status line.
inside systemctl reload bpftokend.service
inside systemctl show -p StatusText bpftokend.service | grep -q "last reload: ok" \
    || { echo "StatusText does not end in last reload: ok" >&2; inside systemctl show -p StatusText bpftokend.service >&2; exit 1; }
inside systemctl show -p StatusText bpftokend.service
inside sh -c 'cd /opt/bpftokend && scripts/install --uninstall' >/dev/null
if inside ldconfig -p | grep -q libbpftoken; then echo "libbpftoken is still installed" >&2; exit 1; fi
echo "nspawn end-to-end: ok"
