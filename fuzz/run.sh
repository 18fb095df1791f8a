#!/usr/bin/env bash
# Run every cargo-fuzz target of bpftokend for DURATION seconds each
# (default 60) and fail if any of them finds a crash.
#
#   fuzz/run.sh [DURATION]
#
# Works with the stable toolchain only:
#   * default (FUZZ_SANITIZER=none): libFuzzer with SanitizerCoverage, no
#     AddressSanitizer. This needs no unstable rustc flag at all, so it
#     builds on plain stable. proto/ and policy/ are `#![forbid(unsafe_code)]`,
#     so what the fuzzer looks for there is panics, failed assertions,
#     hangs and OOMs, which this mode catches at ~6x the speed of ASan.
#   * FUZZ_SANITIZER=address (or memory, thread, leak): needs
#     `-Zsanitizer`, which stable rustc only accepts with RUSTC_BOOTSTRAP=1;
#     the script sets that for these modes.
#
# Other knobs (environment):
#   FUZZ_TIMEOUT=N          one input running longer than N s is a failure (10)
#   FUZZ_RSS_LIMIT_MB=N     memory limit per process (2048)
#   FUZZ_UPDATE_CORPUS=1    write new inputs into fuzz/corpus/<target>/
#                           (default: into a scratch dir under fuzz/target/,
#                           so a run leaves the committed corpus untouched)
#   FUZZ_TARGETS="a b"      run only these targets
#
# Crash reproducers land in fuzz/artifacts/<target>/ (kept by .gitignore so
# they can be committed); replay one from fuzz/ with
#   cargo fuzz run --sanitizer none <target> artifacts/<target>/crash-...
set -euo pipefail

duration=${1:-60}
if ! [[ $duration =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [DURATION_SECONDS]  (a positive integer, default 60)" >&2
    exit 2
fi

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

sanitizer=${FUZZ_SANITIZER:-none}
case $sanitizer in
    none) ;;
    address | leak | memory | thread) export RUSTC_BOOTSTRAP=1 ;;
    *) echo "FUZZ_SANITIZER must be none, address, leak, memory or thread" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if [[ -n ${FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${targets[*]} (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer"

mkdir -p target/fuzz-logs
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if [[ ${FUZZ_UPDATE_CORPUS:-0} == 1 ]]; then
        corpora=("corpus/$t")
    else
        scratch="target/fuzz-corpus/$t"
        rm -rf "$scratch"
        mkdir -p "$scratch"
        # libFuzzer writes new inputs to the first directory only.
        corpora=("$scratch" "corpus/$t")
    fi
    args=(
        "-max_total_time=$duration"
        "-timeout=${FUZZ_TIMEOUT:-10}"
        "-rss_limit_mb=${FUZZ_RSS_LIMIT_MB:-2048}"
        -print_final_stats=1
    )
    [[ -f dict/$t.dict ]] && args+=("-dict=dict/$t.dict")
    log="target/fuzz-logs/$t.log"

    echo "== fuzzing $t for ${duration}s (log: fuzz/$log)"
    if cargo fuzz run --sanitizer "$sanitizer" "$t" "${corpora[@]}" -- "${args[@]}" >"$log" 2>&1; then
        grep -E '^(Done [0-9]+ runs|#[0-9]+[[:space:]]+DONE)' "$log" || tail -n 5 "$log"
    else
        echo "!! $t FAILED; end of its log:"
        tail -n 80 "$log"
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "== crashes in: ${failed[*]}; reproducers:" >&2
    for t in "${failed[@]}"; do
        ls -1 "artifacts/$t" | sed "s|^|   fuzz/artifacts/$t/|" >&2
    done
    exit 1
fi
echo "== no crashes"
