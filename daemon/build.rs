//! Compiles the enforcer (`bpf/enforcer.bpf.c`, a BPF LSM program) with
//! clang `-target bpf` into `$OUT_DIR/enforcer.bpf.o`, which the daemon
//! embeds. The libbpf headers come from libbpf-sys's vendored libbpf
//! (`DEP_BPF_INCLUDE`), the uapi headers from the system
//! (linux-libc-dev); kernel types are declared in the source with CO-RE
//! relocations, so no vmlinux.h and no BTF are needed at build time.
//! `BPFTOKEN_CLANG` names another clang.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/enforcer.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=BPFTOKEN_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("enforcer.bpf.o");
    let include = std::env::var("DEP_BPF_INCLUDE").expect("libbpf-sys exports its headers as DEP_BPF_INCLUDE");
    let clang = std::env::var("BPFTOKEN_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => ("x86", "x86_64-linux-gnu"),
        Ok("aarch64") => ("arm64", "aarch64-linux-gnu"),
        Ok(other) => panic!("bpftokend's enforcer build does not know the target arch {other}"),
        Err(_) => panic!("cargo sets CARGO_CFG_TARGET_ARCH"),
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-D__TARGET_ARCH_{}", multiarch.0))
        .arg(format!("-I{include}"))
        .arg(format!("-I/usr/include/{}", multiarch.1))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} -target bpf failed on {src} ({s})"),
        Err(e) => panic!(
            "cannot run {clang} to build the enforcer ({src}): {e}; install clang \
             (apt-get install clang; scripts/setup-test-tools.sh does) or set BPFTOKEN_CLANG"
        ),
    }
}
