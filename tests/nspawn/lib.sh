# Shared by the nspawn end-to-end tests (sourced, not run): make a minimal
# Debian root with systemd, boot it in systemd-nspawn with systemd as PID 1,
# and run commands inside it.
#
#   . tests/nspawn/lib.sh
#   nspawn_rootfs ROOT PACKAGES     debootstrap ROOT (minbase + PACKAGES,
#                                   comma-separated) unless it already has
#                                   systemd and every PACKAGE
#   nspawn_boot ROOT MACHINE [ARG...]  boot it (ARGs go to systemd-nspawn);
#                                   sets $leader and an EXIT trap that
#                                   stops the container
#   inside CMD...                   run CMD in all of the container's
#                                   namespaces, with a clean environment
#                                   (the host's, e.g. CARGO_TARGET_DIR,
#                                   would leak into scripts run there)
#
# The Debian mirror comes from the host's apt sources and the suite is the
# host's, so binaries built on the host run inside. Callers use set -eu.

nspawn_rootfs() {
    _root=$1 _packages=$2
    _mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -E '/debian/?$' | head -1)
    [ -n "$_mirror" ] || _mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -E '/debian/?$' | head -1)
    [ -n "$_mirror" ] || { echo "no Debian mirror in the apt sources" >&2; exit 1; }
    _suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
    _complete=true
    [ -x "$_root/usr/lib/systemd/systemd" ] || _complete=false
    for _p in $(echo "$_packages" | tr ',' ' '); do
        [ -e "$_root/var/lib/dpkg/info/$_p.list" ] || [ -e "$_root/var/lib/dpkg/info/$_p:$(dpkg --print-architecture).list" ] \
            || _complete=false
    done
    if ! $_complete; then
        rm -rf "$_root"
        debootstrap --variant=minbase --include="$_packages" "$_suite" "$_root" "$_mirror" >/dev/null
    fi
}

nspawn_boot() {
    _root=$1 _machine=$2
    shift 2
    _log=$(dirname "$_root")/$(basename "$_root")-boot.log
    # --capability=CAP_BPF --system-call-filter='bpf setns': nspawn's
    # default seccomp filter makes bpf(2) fail with EPERM for the
    # container's services (found by running the daemon as a service and as
    # a scope); a host running bpftokend directly under systemd has no such
    # filter. --register=no --keep-unit: the host's systemd is not PID 1
    # here.
    systemd-nspawn -q -D "$_root" --boot --register=no --keep-unit --capability=CAP_BPF \
        --system-call-filter='bpf setns' --machine="$_machine" "$@" </dev/null >"$_log" 2>&1 &
    nspawn=$!
    trap 'kill -TERM $nspawn 2>/dev/null || true; wait $nspawn 2>/dev/null || true' EXIT
    leader=""
    for _ in $(seq 100); do
        leader=$(pgrep -P $nspawn 2>/dev/null | head -1 || true)
        [ -n "$leader" ] && nsenter -t "$leader" -a systemctl is-system-running --wait >/dev/null 2>&1 && break
        sleep 0.2
    done
    [ -n "$leader" ] || { echo "the container did not boot" >&2; cat "$_log" >&2; exit 1; }
}

inside() { nsenter -t "$leader" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
