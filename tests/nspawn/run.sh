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
# system's apt sources. Exits non-zero on any failure.
set -eu
cd "$(dirname "$0")/../.."
root=${1:-/var/tmp/bpftokend-nspawn}
mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -E '/debian/?$' | head -1)
[ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -E '/debian/?$' | head -1)
[ -n "$mirror" ] || { echo "no Debian mirror in the apt sources" >&2; exit 1; }
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")

# libelf1: bpftokend links libbpf (its BPF LSM enforcer's loader); a root
# made before that is rebuilt.
if [ ! -x "$root/usr/lib/systemd/systemd" ] || ! ls "$root"/usr/lib/*/libelf.so.1 >/dev/null 2>&1; then
    rm -rf "$root"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libelf1,zlib1g "$suite" "$root" "$mirror" >/dev/null
fi
# The same libc as the host (same suite), so the host's build runs there.
cargo build --release --locked -p bpftokend -p bpftoken -p bpftoken-capi >/dev/null 2>&1
rm -rf "$root/opt/bpftokend" && mkdir -p "$root/opt/bpftokend"
cp -r Cargo.toml scripts systemd examples docs capi "$root/opt/bpftokend/"
mkdir -p "$root/opt/bpftokend/target/release"
cp target/release/bpftokend target/release/bpftoken target/release/libbpftoken.so "$root/opt/bpftokend/target/release/"
chroot "$root" sh -c 'id tokenuser >/dev/null 2>&1 || useradd -m tokenuser; getent group bpftoken >/dev/null || groupadd --system bpftoken; usermod -a -G bpftoken tokenuser'
rm -f "$root/etc/bpftokend/policy.toml"

machine=bpftokend-test
# --capability=CAP_BPF --system-call-filter='bpf setns': nspawn's default
# seccomp filter makes bpf(2) fail with EPERM for the container's services
# (found by running the daemon as a service and as a scope); a host
# running bpftokend directly under systemd has no such filter.
# --register=no --keep-unit: the host's systemd is not PID 1 here.
systemd-nspawn -q -D "$root" --boot --register=no --keep-unit --capability=CAP_BPF --system-call-filter='bpf setns' --machine=$machine </dev/null >"$root/../nspawn-boot.log" 2>&1 &
nspawn=$!
cleanup() { kill -TERM $nspawn 2>/dev/null || true; wait $nspawn 2>/dev/null || true; }
trap cleanup EXIT
leader=""
for _ in $(seq 100); do
    leader=$(pgrep -P $nspawn 2>/dev/null | head -1 || true)
    [ -n "$leader" ] && nsenter -t "$leader" -a systemctl is-system-running --wait >/dev/null 2>&1 && break
    sleep 0.2
done
[ -n "$leader" ] || { echo "the container did not boot" >&2; cat "$root/../nspawn-boot.log" >&2; exit 1; }
inside() { nsenter -t "$leader" -a "$@"; }

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
