#!/bin/sh
# Install the BPF tools the end-to-end tests drive. Idempotent, quiet once
# everything is in place. Needs root.
#
# - apt: clang (compiles tests/bpf/*.bpf.c with -target bpf), libelf-dev,
#   zlib1g-dev, pkg-config and make (libbpf-sys builds its vendored libbpf
#   from source; the C ABI test uses pkg-config).
# - From Debian trixie (scripts/debian-fetch, mirror from the system's apt
#   sources) into $cache/root: bpftool 7.5 with the libc, loader and
#   libraries it runs with (bookworm's bpftool 7.1 predates tokens), and
#   libbpf 1.5 (libbpf1, libbpf-dev) plus trixie's kernel uapi headers
#   (linux-libc-dev: BPF_F_TOKEN_FD) for the C test program.
# - $libexec/bpftool: runs trixie's bpftool with trixie's loader and
#   libraries. A plain sh script with absolute paths, world-executable, so it
#   works for any user and after setns() into a user namespace.
# - $libexec/obj/NAME.bpf.o: tests/bpf/NAME.bpf.c compiled with clang,
#   world-readable. Rebuilt when the source is newer.
# - $libexec/preload_mint.so: tests/c/preload_mint.c, the LD_PRELOAD attack
#   on `executables` rules (tests/tests/identity.rs, the VM's bind-exe).
# - $libexec/trace_skel: tests/c/trace_skel.c, an ordinary libbpf 1.5
#   tracing tool built on a bpftool-generated skeleton of
#   tests/bpf/trace_skel.bpf.c; $libexec/trace_skel_run runs it with
#   trixie's loader and libraries (tests/tests/tracing.rs).
set -eu
cd "$(dirname "$0")/.."
cache=/var/cache/bpftoken-test/trixie
libexec=/usr/local/libexec/bpftoken-test
trixie=$cache/root
multiarch=x86_64-linux-gnu

need=""
command -v clang >/dev/null || need="$need clang"
command -v pkg-config >/dev/null || need="$need pkg-config"
command -v make >/dev/null || need="$need make"
command -v cc >/dev/null || need="$need gcc libc6-dev"
[ -e /usr/include/gelf.h ] || need="$need libelf-dev"
[ -e /usr/include/zlib.h ] || need="$need zlib1g-dev"
if [ -n "$need" ]; then
    apt-get -q update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends $need
fi

scripts/debian-fetch trixie "$cache" \
    bpftool libc6 libelf1t64 zlib1g libcap2 libzstd1 libbpf1 libbpf-dev linux-libc-dev

# Write $2 to $1 (mode $3) only when it changed.
put() {
    tmp=$(mktemp "$1.XXXXXX")
    printf '%s\n' "$2" >"$tmp"
    chmod "$3" "$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

install -d -m 0755 "$libexec" "$libexec/obj"
put "$libexec/bpftool" "#!/bin/sh
# Debian trixie's bpftool 7.5 (libbpf 1.5) with its own loader and
# libraries, from $cache (scripts/setup-test-tools.sh).
exec $trixie/usr/lib64/ld-linux-x86-64.so.2 --library-path $trixie/usr/lib/$multiarch \\
    $trixie/usr/sbin/bpftool \"\$@\"" 0755

for src in tests/bpf/*.bpf.c; do
    obj=$libexec/obj/$(basename "$src" .c).o
    if [ ! -e "$obj" ] || [ "$src" -nt "$obj" ]; then
        clang -O2 -g -target bpf -I"$trixie/usr/include" -I"$trixie/usr/include/$multiarch" \
            -c "$src" -o "$obj.tmp"
        chmod 0644 "$obj.tmp"
        mv -f "$obj.tmp" "$obj"
    fi
done

so=$libexec/preload_mint.so
if [ ! -e "$so" ] || [ tests/c/preload_mint.c -nt "$so" ]; then
    cc -O2 -Wall -Werror -shared -fPIC tests/c/preload_mint.c -o "$so.tmp"
    chmod 0755 "$so.tmp"
    mv -f "$so.tmp" "$so"
fi

gen=$cache/gen
install -d -m 0755 "$gen"
skel=$gen/trace_skel.skel.h
if [ ! -e "$skel" ] || [ "$libexec/obj/trace_skel.bpf.o" -nt "$skel" ]; then
    "$libexec/bpftool" gen skeleton "$libexec/obj/trace_skel.bpf.o" name trace_skel >"$skel.tmp"
    mv -f "$skel.tmp" "$skel"
fi
tool=$libexec/trace_skel
if [ ! -e "$tool" ] || [ tests/c/trace_skel.c -nt "$tool" ] || [ "$skel" -nt "$tool" ]; then
    # Trixie's libbpf needs trixie's libc, which only its loader provides
    # at run time: the link leaves those symbols to it.
    cc -O2 -Wall -Werror -I"$gen" -I"$trixie/usr/include" -I"$trixie/usr/include/$multiarch" \
        tests/c/trace_skel.c -o "$tool.tmp" -L"$trixie/usr/lib/$multiarch" -lbpf -Wl,--allow-shlib-undefined
    chmod 0755 "$tool.tmp"
    mv -f "$tool.tmp" "$tool"
fi
put "$libexec/trace_skel_run" "#!/bin/sh
# tests/c/trace_skel.c (libbpf 1.5) with trixie's loader and libraries.
exec $trixie/usr/lib64/ld-linux-x86-64.so.2 --library-path $trixie/usr/lib/$multiarch $tool \"\$@\"" 0755

if ! out=$("$libexec/bpftool" version 2>&1); then
    echo "setup-test-tools: $libexec/bpftool does not run:" >&2
    echo "$out" >&2
    exit 1
fi
