//! Whether the running kernel has BPF tokens at all, so that "no daemon"
//! can be told apart from "no daemon can run here".

/// What the running kernel says about BPF tokens, asked without privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSupport {
    /// The kernel knows `BPF_TOKEN_CREATE` (Linux 6.9+).
    Supported,
    /// It does not; the release is `/proc/sys/kernel/osrelease`.
    Unsupported { release: String },
    /// Could not tell (e.g. an LSM refused the probe).
    Unknown,
}

/// Asks the kernel for a token from fd -1: a kernel with tokens rejects the
/// fd (EBADF), one without them the command (EINVAL). Before 6.5 an
/// unprivileged caller is refused every command while
/// `unprivileged_bpf_disabled` is set (EPERM); then the release decides.
///
/// ```
/// use bpftoken::kernel::{token_support, TokenSupport};
///
/// if let TokenSupport::Unsupported { release } = token_support() {
///     eprintln!("Linux {release} has no BPF tokens (6.9 or later has)");
/// }
/// ```
pub fn token_support() -> TokenSupport {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    match crate::sys::token_create_from_bad_fd() {
        Some(libc::EBADF) => TokenSupport::Supported,
        Some(libc::EINVAL) => TokenSupport::Unsupported { release },
        Some(libc::EPERM) if release_before(&release, (6, 9)) => TokenSupport::Unsupported { release },
        _ => TokenSupport::Unknown,
    }
}

/// `6.1.0-50-amd64` is before (6, 9); an unparsable release is not.
fn release_before(release: &str, version: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) < version,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_compare_by_major_and_minor() {
        assert!(release_before("6.1.0-50-amd64", (6, 9)));
        assert!(release_before("5.15.0", (6, 9)));
        assert!(!release_before("6.12.107+deb13-amd64", (6, 9)));
        assert!(!release_before("6.9", (6, 9)));
        assert!(!release_before("garbage", (6, 9)));
    }

    #[test]
    fn this_kernel_answers_the_probe() {
        // Whatever the kernel, the probe must not create anything or fail
        // to classify a kernel recent enough to build this on.
        let s = token_support();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if !release_before(release.trim(), (6, 9)) {
            assert_eq!(s, TokenSupport::Supported);
        }
    }
}
