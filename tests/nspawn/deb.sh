#!/bin/sh
# End to end through the Debian package, under a real systemd as PID 1:
# build the .deb (scripts/build-deb), boot a minimal Debian in
# systemd-nspawn, `apt-get install ./bpftokend_*.deb` there (dependencies
# such as libelf1 come from the Debian mirror: the root lacks them), check
# that the socket is enabled and listening and the service not yet running,
# mint as an ordinary member of the group bpftoken (socket activation
# starts the service), check every file of `dpkg -L`, reinstall (the
# upgrade path: the socket restarted, an idle service left idle, a running
# one restarted, a mint works again), then `apt-get purge`
# and check that nothing is left: no file the package listed, no directory
# of its own, no /etc/bpftokend, no unit systemd knows, no enable symlink,
# no process, no library in ld.so's cache, no group bpftoken (the package
# created it). A second round starts with an operator's group bpftoken and
# an operator's file in /etc/bpftokend, removes then purges: removal keeps
# the edited conffile, purge deletes it and keeps the group and the
# operator's file.
#
#   tests/nspawn/deb.sh [ROOTFS]     (root; default ROOTFS /var/tmp/bpftokend-nspawn-deb)
#
# ROOTFS is the pristine root (debootstrapped once, then reused); the
# container runs on a throwaway copy of it (--ephemeral), so every run
# installs into a root that never had the package or its dependencies.
# Needs systemd-container, debootstrap, dpkg-dev and the network to the
# Debian mirror. Each failed check says what was wrong; exits non-zero.
set -eu
cd "$(dirname "$0")/../.."
root=${1:-/var/tmp/bpftokend-nspawn-deb}
. tests/nspawn/lib.sh
fail() { echo "deb end-to-end: $*" >&2; exit 1; }

deb=$(scripts/build-deb) || fail "scripts/build-deb failed"
[ -f "$deb" ] || fail "scripts/build-deb did not write a package (it printed: $deb)"
nspawn_rootfs "$root" systemd,systemd-sysv,dbus
if [ -e "$root/var/lib/dpkg/info/libelf1:$(dpkg --print-architecture).list" ]; then
    fail "$root has libelf1 already, so the package's Depends would go untested; remove $root"
fi
nspawn_boot "$root" bpftokend-deb --ephemeral --bind-ro="$(dirname "$deb"):/mnt/deb"
pkg=/mnt/deb/$(basename "$deb")
apt_get() { inside env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0 "$@" </dev/null; }
# Runs the shell script $1 inside (stdin passed on) and prints its output;
# fails unless the script ran to its end, so that an empty answer ("none
# left", "none missing") cannot come from a container that did not answer.
inside_sh() {
    _out=$(inside sh -c "$1
echo '# complete'") || true
    case "$_out" in *"# complete") ;; *) fail "could not run a check in the container: $_out" ;; esac
    printf '%s\n' "$_out" | sed '/^# complete$/d; /^$/d'
}
# What is present of the package's traces, one line each (empty: none).
traces() {
    inside_sh '
        find / -xdev -path /mnt/deb -prune -o -name "*bpftoken*" -print
        for p in /etc/bpftokend /var/lib/bpftokend /run/bpftokend; do [ ! -e "$p" ] || echo "$p"; done
        for c in /proc/[0-9]*/comm; do [ "$(cat "$c" 2>/dev/null)" != bpftokend ] || echo "process ${c%/comm}"; done
        ldconfig -p | grep libbpftoken || true
        for u in bpftokend.socket bpftokend.service; do
            state=$(systemctl show -p LoadState --value "$u")
            [ "$state" = not-found ] || echo "systemctl knows $u: LoadState=$state"
        done'
}
apt_get update >/dev/null || fail "apt-get update failed in the container"

echo "round 1: the package creates the group; install, mint, purge"
inside sh -c 'getent group bpftoken' && fail "the pristine root already has a group bpftoken"
out=$(apt_get install "$pkg" 2>&1) || fail "apt-get install $pkg failed: $out"
echo "$out" | grep -q 'Setting up libelf1' || fail "apt-get install did not install libelf1 from the Depends: $out"
[ "$(inside dpkg-query -W -f '${Status}' bpftokend)" = "install ok installed" ] || fail "dpkg does not have bpftokend installed"
# dpkg -L starts with "/.", the root every package has.
files=$(inside dpkg -L bpftokend | grep -vx '/\.')
for f in /usr/sbin/bpftokend /usr/bin/bpftoken /usr/lib/systemd/system/bpftokend.socket \
    /usr/lib/systemd/system/bpftokend.service /usr/lib/sysusers.d/bpftokend.conf /etc/bpftokend/policy.toml \
    /usr/lib/libbpftoken.so.0 /usr/lib/libbpftoken.so /usr/include/bpftoken.h /usr/lib/pkgconfig/bpftoken.pc \
    /usr/share/man/man8/bpftokend.8.gz /usr/share/man/man8/bpftokend-check-policy.8.gz \
    /usr/share/man/man1/bpftoken.1.gz /usr/share/man/man1/bpftoken-run.1.gz /usr/share/man/man5/bpftokend.policy.5.gz \
    /usr/share/bash-completion/completions/bpftoken /usr/share/zsh/site-functions/_bpftokend \
    /usr/share/fish/vendor_completions.d/bpftoken.fish /usr/share/doc/bpftokend/copyright; do
    echo "$files" | grep -qx "$f" || fail "dpkg -L bpftokend does not list $f"
done
missing=$(echo "$files" | inside_sh 'while read -r f; do [ -e "$f" ] || echo "$f"; done')
[ -z "$missing" ] || fail "files dpkg -L lists are missing: $missing"
# Files and symlinks go with the package; directories only if no other
# package owns them.
plain=$(echo "$files" | inside_sh 'while read -r f; do [ -d "$f" ] && [ ! -L "$f" ] || echo "$f"; done')
dirs=$(echo "$files" | inside_sh 'while read -r f; do [ ! -d "$f" ] || [ -L "$f" ] || echo "$f"; done')
[ -n "$plain" ] && [ -n "$dirs" ] || fail "dpkg -L bpftokend lists no files or no directories: $files"
inside dpkg-query -W -f '${Conffiles}' bpftokend | grep -q '^ /etc/bpftokend/policy.toml ' \
    || fail "/etc/bpftokend/policy.toml is not a conffile"
inside grep -qx 'prefix=/usr' /usr/lib/pkgconfig/bpftoken.pc || fail "bpftoken.pc does not name the prefix /usr"
inside ldconfig -p | grep -q 'libbpftoken.so.0 ' || fail "libbpftoken.so.0 is not in ld.so's cache (ldconfig trigger)"
inside getent group bpftoken >/dev/null || fail "installing did not create the group bpftoken"
[ "$(inside systemctl is-enabled bpftokend.socket)" = enabled ] || fail "bpftokend.socket is not enabled"
[ "$(inside systemctl is-active bpftokend.socket)" = active ] || fail "bpftokend.socket is not active"
state=$(inside systemctl is-active bpftokend.service || true)
[ "$state" = inactive ] || fail "bpftokend.service is $state before any connection (want inactive)"
# A reinstall while the service is idle restarts the socket only.
out=$(apt_get install --reinstall "$pkg" 2>&1) || fail "apt-get install --reinstall $pkg failed: $out"
[ "$(inside systemctl is-active bpftokend.socket)" = active ] || fail "bpftokend.socket is not active after the reinstall"
state=$(inside systemctl is-active bpftokend.service || true)
[ "$state" = inactive ] || fail "bpftokend.service is $state after a reinstall while idle (want inactive)"
inside useradd -m tokenuser
inside usermod -a -G bpftoken tokenuser
out=$(inside setpriv --reuid tokenuser --regid tokenuser --init-groups -- bpftoken run --maps array -- sh -c 'echo token=$BPF_TOKEN_FD') || true
case "$out" in token=[0-9]*) ;; *) fail "tokenuser's mint through the packaged daemon failed: $out" ;; esac
[ "$(inside systemctl is-active bpftokend.service)" = active ] || fail "the mint did not start bpftokend.service"
# An upgrade (here a reinstall: postinst configure with the old version)
# restarts the socket and with it (Requires=) the running service, so the
# new binary serves at once.
pid=$(inside systemctl show -p MainPID --value bpftokend.service)
out=$(apt_get install --reinstall "$pkg" 2>&1) || fail "apt-get install --reinstall $pkg failed: $out"
[ "$(inside systemctl is-active bpftokend.socket)" = active ] || fail "bpftokend.socket is not active after the reinstall"
[ "$(inside systemctl is-active bpftokend.service)" = active ] || fail "bpftokend.service is not active after the reinstall"
new=$(inside systemctl show -p MainPID --value bpftokend.service)
[ "$new" != "$pid" ] || fail "the reinstall did not restart bpftokend.service (MainPID still $pid)"
out=$(inside setpriv --reuid tokenuser --regid tokenuser --init-groups -- bpftoken run --maps array -- sh -c 'echo token=$BPF_TOKEN_FD') || true
case "$out" in token=[0-9]*) ;; *) fail "tokenuser's mint after the reinstall failed: $out" ;; esac

out=$(apt_get purge bpftokend 2>&1) || fail "apt-get purge bpftokend failed: $out"
echo "$out" | grep -q 'removed the group bpftoken, which installing the package created (its members were: tokenuser)' \
    || fail "purge did not say it removed the group it created: $out"
left=$(echo "$plain" | inside_sh 'while read -r f; do [ ! -e "$f" ] && [ ! -L "$f" ] || echo "$f"; done')
[ -z "$left" ] || fail "purge left files dpkg -L listed: $left"
left=$(echo "$dirs" | inside_sh 'while read -r d; do [ ! -d "$d" ] || dpkg -S "$d" >/dev/null 2>&1 || echo "$d"; done')
[ -z "$left" ] || fail "purge left directories no other package owns: $left"
left=$(traces)
[ -z "$left" ] || fail "purge left traces of the package: $left"
if inside getent group bpftoken >/dev/null || inside grep -q '^bpftoken:' /etc/gshadow; then
    fail "purge left the group bpftoken, which the package created"
fi
inside dpkg-query -W -f '${Status}' bpftokend 2>/dev/null | grep -qv 'not-installed' \
    && fail "dpkg still records bpftokend: $(inside dpkg-query -W -f '${Status}' bpftokend)"

echo "round 2: the operator's group and file; install, edit the policy, remove, purge"
inside groupadd --system bpftoken
out=$(apt_get install "$pkg" 2>&1) || fail "apt-get install $pkg (round 2) failed: $out"
inside sh -c 'echo "# edited by the operator" >>/etc/bpftokend/policy.toml; echo notes >/etc/bpftokend/operator-notes'
out=$(apt_get remove bpftokend 2>&1) || fail "apt-get remove bpftokend failed: $out"
[ "$(inside dpkg-query -W -f '${Status}' bpftokend)" = "deinstall ok config-files" ] \
    || fail "after remove, dpkg's state is $(inside dpkg-query -W -f '${Status}' bpftokend) (want deinstall ok config-files)"
inside grep -qx '# edited by the operator' /etc/bpftokend/policy.toml || fail "remove did not keep the edited conffile"
all=$(traces)
left=$(echo "$all" | grep -v -e '^/etc/bpftokend' -e '^/var/lib/dpkg/info/bpftokend\.' \
    -e '^/etc/systemd/system/sockets.target.wants/bpftokend.socket$' -e '^/var/lib/systemd/deb-systemd-helper-enabled/' || true)
[ -z "$left" ] || fail "remove left more than the conffile, dpkg's record and the enable state: $left"
out=$(apt_get purge bpftokend 2>&1) || fail "apt-get purge bpftokend (round 2) failed: $out"
echo "$out" | grep -q 'kept the group bpftoken: it existed before the package was installed' \
    || fail "purge did not say it kept the operator's group: $out"
inside getent group bpftoken >/dev/null || fail "purge removed the operator's group bpftoken"
[ "$(inside ls /etc/bpftokend)" = operator-notes ] \
    || fail "after purge /etc/bpftokend should hold only the operator's file, holds: $(inside ls -A /etc/bpftokend 2>&1)"
inside rm -r /etc/bpftokend
left=$(traces)
[ -z "$left" ] || fail "purge (round 2) left traces of the package: $left"
echo "deb end-to-end: ok ($(basename "$deb"))"
