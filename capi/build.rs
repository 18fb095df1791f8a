//! Give libbpftoken.so its soname, so programs link against the ABI major
//! (`libbpftoken.so.0`), not the development symlink.
#![forbid(unsafe_code)]

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbpftoken.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
}
