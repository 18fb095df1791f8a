#!/bin/sh
# Kernel matrix: boot each kernel named in tests/vm/expected.txt under
# qemu (TCG) with an initramfs holding the release binaries, run
# bpftoken-scenarios inside, and compare what each kernel reports with the
# expected outcome. Prints the matrix; exits non-zero on any difference,
# missing result or boot timeout.
#
#   tests/vm/run.sh [SUITE...]      (root; default: every suite in expected.txt)
#
# Kernels are Debian's linux-image-amd64 of each suite, fetched from the
# system's configured mirror by scripts/debian-fetch and cached under
# /var/cache/bpftoken-test/SUITE. Serial logs are
# kept in target/vm/. Needs qemu-system-x86, busybox-static, cpio, and
# the token-aware bpftool and BPF objects of scripts/setup-test-tools.sh
# (copied into the VM at the same paths).
# BPFTOKEN_VM_TIMEOUT: hard limit per boot in seconds (default 150).
set -eu
cd "$(dirname "$0")/../.."
cache=/var/cache/bpftoken-test
# What scripts/setup-test-tools.sh installs.
libexec=/usr/local/libexec/bpftoken-test
trixie=$cache/trixie/root
boot_timeout=${BPFTOKEN_VM_TIMEOUT:-150}
expected=tests/vm/expected.txt
bins="bpftokend bpftoken bpftoken-probe bpftoken-scenarios"

die() {
    echo "tests/vm/run.sh: $*" >&2
    exit 1
}
for tool in qemu-system-x86_64 cpio gzip busybox timeout; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install qemu-system-x86 busybox-static cpio)"
done
busybox=$(command -v busybox)
LC_ALL=C ldd "$busybox" 2>&1 | grep -q 'not a dynamic executable' \
    || die "$busybox is not static (apt-get install busybox-static)"
bpftool=$libexec/bpftool
bpf_obj=$libexec/obj/sockfilter.bpf.o
[ -x "$bpftool" ] && [ -f "$bpf_obj" ] && [ -f "$libexec/preload_mint.so" ] && [ -f "$libexec/obj/kprobe_openat.bpf.o" ] \
    && [ -x "$trixie/usr/sbin/bpftool" ] \
    || die "no token-aware bpftool or BPF objects: run scripts/setup-test-tools.sh"

if [ $# -gt 0 ]; then
    suites="$*"
else
    suites=$(awk '!/^#/ && NF { print $1 }' "$expected")
fi
for suite in $suites; do
    grep -q "^$suite " "$expected" || die "no expected outcomes for $suite in $expected"
done

nice cargo build --release --locked --workspace --bins >&2

work=$(mktemp -d /tmp/bpftoken-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
logs=target/vm
mkdir -p "$logs"

# The initramfs, shared by every kernel: busybox, the binaries and the
# shared libraries they load, two test users, /init.
root=$work/initramfs
mkdir -p "$root/bin" "$root/etc" "$root/opt/bpftoken" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
for b in $bins; do
    [ -x "target/release/$b" ] || die "target/release/$b was not built"
    strip -o "$root/opt/bpftoken/$b" "target/release/$b" 2>/dev/null || cp "target/release/$b" "$root/opt/bpftoken/$b"
    for lib in $(ldd "target/release/$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
# bpftool 7.5 with trixie's loader and libraries, where its wrapper
# expects them, the objects it loads (sockfilter; kprobe_openat for
# trace-kprobe), and the LD_PRELOAD attack of the bind-exe scenario
# (built against the host's libc, copied above).
loader=$trixie/usr/lib64/ld-linux-x86-64.so.2
for f in "$bpftool" "$bpf_obj" "$libexec/preload_mint.so" "$libexec/obj/kprobe_openat.bpf.o" "$trixie/usr/sbin/bpftool" "$loader" \
    $("$loader" --library-path "$trixie/usr/lib/x86_64-linux-gnu" --list "$trixie/usr/sbin/bpftool" \
        | awk -v t="$trixie" '$2 == "=>" && index($3, t) == 1 { print $3 }'); do
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
done
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
bpftk-alice:x:1001:1001::/tmp:/bin/sh
bpftk-eve:x:1003:1003::/tmp:/bin/sh
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
bpftk-alice:x:1001:
bpftk-eve:x:1003:
EOF
printf 'passwd: files\ngroup: files\n' >"$root/etc/nsswitch.conf"
sed -e "s|@BPFTOOL@|$bpftool|" -e "s|@BPF_OBJ@|$bpf_obj|" tests/vm/init.sh >"$root/init"
chmod 0755 "$root/init"
chmod 1777 "$root/tmp"
(cd "$root" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$work/initrd.gz"

# One boot per kernel.
status=0
for suite in $suites; do
    kdir=$cache/$suite
    pkg=$(scripts/debian-fetch --depends "$suite" "$kdir" linux-image-amd64 | grep -m 1 '^linux-image-') \
        || die "no linux-image-* behind linux-image-amd64 in $suite"
    scripts/debian-fetch "$suite" "$kdir" "$pkg"
    vmlinuz=$kdir/root/boot/vmlinuz-${pkg#linux-image-}
    [ -f "$vmlinuz" ] || die "$pkg has no $vmlinuz"
    log=$logs/$suite.log
    echo "booting $suite ($pkg) under qemu TCG, at most $boot_timeout s" >&2
    start=$(date +%s)
    # lsm=...,bpf: the BPF LSM is active, for tests that need it.
    rc=0
    timeout --kill-after=5 "$boot_timeout" qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 \
        -nographic -no-reboot -kernel "$vmlinuz" -initrd "$work/initrd.gz" \
        -append "console=ttyS0 quiet lsm=lockdown,capability,landlock,yama,bpf rdinit=/init panic=-1" \
        </dev/null >"$log" 2>&1 || rc=$?
    secs=$(($(date +%s) - start))
    tr -d '\r' <"$log" >"$work/$suite.log"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "$suite: boot timed out after $boot_timeout s; serial log: $log" >&2
        status=1
    elif ! grep -q '^BPFTOKEN-VM-END' "$work/$suite.log"; then
        echo "$suite: the scenarios did not finish (qemu exit $rc); serial log: $log" >&2
        tail -n 30 "$work/$suite.log" >&2
        status=1
    fi
    release=$(awk '$1 == "INFO" && $2 == "kernel" { print $3 }' "$work/$suite.log")
    echo "$suite ${release:-?} $secs" >>"$work/kernels"
    awk -v s="$suite" '$1 == "RESULT" { print s, $2, $3 }' "$work/$suite.log" >>"$work/results"
    grep '^RESULT .* fail ' "$work/$suite.log" >&2 || true
done

# The matrix: capability rows, kernel columns; a cell that differs from
# expected.txt is marked and fails the run.
touch "$work/results"
awk -v results="$work/results" -v kernels="$work/kernels" '
    BEGIN {
        while ((getline line < kernels) > 0) {
            split(line, f, " "); nk++; suite[nk] = f[1]; rel[f[1]] = f[2]; secs[f[1]] = f[3]
        }
        while ((getline line < results) > 0) { split(line, f, " "); got[f[1], f[2]] = f[3] }
    }
    /^#[ \t]+daemon-start/ { for (i = 2; i <= NF; i++) cap[++nc] = $i; next }
    /^#/ || !NF { next }
    { for (i = 2; i <= NF; i++) want[$1, cap[i - 1]] = $i }
    END {
        printf "\nKernel matrix (pass / fail / unsupported = kernel lacks it, said clearly; MISMATCH = differs from tests/vm/expected.txt)\n\n"
        printf "%-22s", "capability"
        for (k = 1; k <= nk; k++) printf "  %-36s", suite[k] " " rel[suite[k]]
        printf "\n"
        for (c = 1; c <= nc; c++) {
            printf "%-22s", cap[c]
            for (k = 1; k <= nk; k++) {
                s = suite[k]; g = got[s, cap[c]]; w = want[s, cap[c]]
                if (g == "") g = "missing"
                cell = g
                if (g == "unsupported" && w == g) cell = "unsupported (expected)"
                if (g != w) { cell = g " MISMATCH (expected " w ")"; bad = 1 }
                printf "  %-36s", cell
            }
            printf "\n"
        }
        printf "%-22s", "boot wall time"
        for (k = 1; k <= nk; k++) printf "  %-36s", secs[suite[k]] " s"
        printf "\n"
        exit bad
    }
' "$expected" || status=1

if [ "$status" != 0 ]; then
    echo "kernel matrix: FAILED (serial logs in $logs/)" >&2
else
    echo "kernel matrix: every kernel as expected" >&2
fi
exit "$status"
