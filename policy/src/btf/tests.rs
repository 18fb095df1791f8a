//! Tests of the BTF reader: built blobs, every truncation and flip.

use super::*;

/// Builds small BTF blobs: types and strings, header computed.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn new() -> Builder {
        Builder { types: Vec::new(), strings: vec![0] }
    }

    fn str(&mut self, s: &str) -> u32 {
        let off = u32::try_from(self.strings.len()).unwrap();
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn ty(&mut self, name: &str, kind: u32, vlen: u32, size: u32) {
        let n = if name.is_empty() { 0 } else { self.str(name) };
        self.words(&[n, (kind << 24) | vlen, size]);
    }

    fn enum32(&mut self, name: &str, items: &[(&str, i32)]) {
        self.ty(name, 6, u32::try_from(items.len()).unwrap(), 4);
        for &(n, v) in items {
            let off = self.str(n);
            self.words(&[off, u32::from_le_bytes(v.to_le_bytes())]);
        }
    }

    fn build(&self) -> Vec<u8> {
        let tl = u32::try_from(self.types.len()).unwrap();
        let sl = u32::try_from(self.strings.len()).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC_LE);
        out.extend_from_slice(&[1, 0]);
        for w in [24, 0, tl, tl, sl] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

fn set_u32(blob: &mut [u8], off: usize, v: u32) {
    blob[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn map_enum(b: &mut Builder) {
    b.enum32(
        "bpf_map_type",
        &[
            ("BPF_MAP_TYPE_UNSPEC", 0),
            ("BPF_MAP_TYPE_HASH", 1),
            ("BPF_MAP_TYPE_CGROUP_STORAGE_DEPRECATED", 19),
            ("BPF_MAP_TYPE_CGROUP_STORAGE", 19),
            ("BPF_MAP_TYPE_RINGBUF", 27),
            ("__MAX_BPF_MAP_TYPE", 28),
        ],
    );
}

fn want_map() -> Vec<(String, u32)> {
    [("hash", 1), ("cgroup_storage", 19), ("cgroup_storage_deprecated", 19), ("ringbuf", 27)]
        .iter()
        .map(|&(n, v)| (n.to_owned(), v))
        .collect()
}

/// A blob with all four enums among other kinds of types.
fn full_blob() -> Vec<u8> {
    let mut b = Builder::new();
    b.ty("int", 1, 0, 4);
    b.words(&[0x0100_0020]);
    b.ty("", 2, 0, 1);
    b.ty("", 3, 0, 0);
    b.words(&[1, 1, 4]);
    b.ty("pair", 4, 2, 8);
    b.words(&[0, 1, 0, 0, 1, 32]);
    b.enum32(
        "bpf_cmd",
        &[("BPF_MAP_CREATE", 0), ("BPF_PROG_TEST_RUN", 10), ("BPF_PROG_RUN", 10), ("__MAX_BPF_CMD", 11)],
    );
    b.ty("", 13, 1, 1);
    b.words(&[0, 1]);
    map_enum(&mut b);
    // an ENUM64 of a wanted name is not what the kernel looks at
    b.ty("bpf_prog_type", 19, 2, 8);
    let (a, c) = (b.str("BPF_PROG_TYPE_UNSPEC"), b.str("BPF_PROG_TYPE_KPROBE"));
    b.words(&[a, 0, 0, c, 2, 0]);
    b.enum32("bpf_prog_type", &[("BPF_PROG_TYPE_UNSPEC", 0), ("BPF_PROG_TYPE_XDP", 6)]);
    // a second ENUM of a wanted name: the first one wins
    b.enum32("bpf_cmd", &[("BPF_MAP_CREATE", 7)]);
    b.ty("big", 19, 1, 8);
    let big = b.str("BIG");
    b.words(&[big, 0, 1]);
    b.enum32("bpf_attach_type", &[("BPF_CGROUP_INET_INGRESS", 0), ("BPF_XDP", 37), ("NEG", -1)]);
    b.ty("v", 14, 0, 1);
    b.words(&[0]);
    b.ty(".data", 15, 1, 0);
    b.words(&[1, 0, 4]);
    b.ty("tag", 17, 0, 1);
    b.words(&[0]);
    b.ty("float", 16, 0, 4);
    b.build()
}

#[test]
fn btf_running_kernel_matches_builtin_tables() {
    let names = match read_running_kernel() {
        Ok(n) => n,
        Err(BtfError::NotFound { path }) => {
            eprintln!("skipping: {} absent", path.display());
            return;
        }
        Err(e) => panic!("{e}"),
    };
    for kind in Kind::ALL {
        let got: Vec<(&str, u32)> = names.names(kind).iter().map(|(n, v)| (n.as_str(), *v)).collect();
        assert_eq!(got, kind.builtin_names(), "{}", kind.kernel_enum());
    }
    assert_eq!(names.value_of(Kind::Map, "ringbuf"), Some(27));
    assert_eq!(names.value_of(Kind::Cmd, "prog_run"), Some(10));
    assert_eq!(names.name_of(Kind::Cmd, 10), Some("prog_test_run"));
    assert_eq!(names.name_of(Kind::Map, 19), Some("cgroup_storage"));
    assert_eq!(names.value_of(Kind::Map, "unspec"), None);
    assert_eq!(names, KernelNames::builtin());
}

#[test]
fn btf_missing_file_is_not_found() {
    let e = read_btf_file(Path::new("/nonexistent/btf/vmlinux")).unwrap_err();
    assert!(matches!(e, BtfError::NotFound { .. }), "{e:?}");
}

#[test]
fn btf_minimal_map_enum() {
    let mut b = Builder::new();
    map_enum(&mut b);
    let blob = b.build();
    assert_eq!(parse_enum(&blob, Kind::Map).unwrap(), want_map());
    assert!(matches!(parse_enums(&blob), Err(BtfError::MissingEnum { name: "bpf_cmd" })));
    assert!(matches!(parse_enum(&blob, Kind::Prog), Err(BtfError::MissingEnum { name: "bpf_prog_type" })));
}

#[test]
fn btf_all_kinds_are_skipped_and_enums_found() {
    let names = parse_enums(&full_blob()).unwrap();
    let pairs = |k| names.names(k).iter().map(|(n, v)| (n.as_str(), *v)).collect::<Vec<_>>();
    assert_eq!(pairs(Kind::Cmd), [("map_create", 0), ("prog_test_run", 10), ("prog_run", 10)]);
    assert_eq!(names.names(Kind::Map), want_map().as_slice());
    assert_eq!(pairs(Kind::Prog), [("xdp", 6)]);
    // -1 has no mask bit; NEG lacks the prefix
    assert_eq!(pairs(Kind::Attach), [("cgroup_inet_ingress", 0), ("xdp", 37)]);
}

/// kind_flag set: the values are signed (-1 is no mask bit, skipped);
/// clear: unsigned (0xffffffff is a value, however large).
#[test]
fn btf_enum_signedness_follows_kind_flag() {
    for (kind_flag, want) in
        [(0u32, vec![("hash".to_owned(), 1), ("big".to_owned(), u32::MAX)]), (1, vec![("hash".to_owned(), 1)])]
    {
        let mut b = Builder::new();
        let name = b.str("bpf_map_type");
        b.words(&[name, (kind_flag << 31) | (6 << 24) | 2, 4]);
        let (hash, big) = (b.str("BPF_MAP_TYPE_HASH"), b.str("BPF_MAP_TYPE_BIG"));
        b.words(&[hash, 1, big, u32::MAX]);
        assert_eq!(parse_enum(&b.build(), Kind::Map).unwrap(), want, "kind_flag {kind_flag}");
    }
}

#[test]
fn btf_malformed_header() {
    assert!(matches!(parse_enums(&[]), Err(BtfError::TruncatedHeader { len: 0 })));
    let blob = full_blob();
    assert!(matches!(parse_enums(&blob[..23]), Err(BtfError::TruncatedHeader { len: 23 })));

    let mut bad = blob.clone();
    bad[0] = 0;
    assert!(matches!(parse_enums(&bad), Err(BtfError::BadMagic { magic: 0xeb00 })));
    bad[..2].copy_from_slice(&[0xeb, 0x9f]);
    assert!(matches!(parse_enums(&bad), Err(BtfError::ForeignEndian)));

    let mut bad = blob.clone();
    bad[2] = 2;
    assert!(matches!(parse_enums(&bad), Err(BtfError::UnsupportedVersion { version: 2 })));

    let mut bad = blob.clone();
    set_u32(&mut bad, 4, 8);
    assert!(matches!(parse_enums(&bad), Err(BtfError::BadHeaderLen { hdr_len: 8, .. })));
    set_u32(&mut bad, 4, u32::MAX);
    assert!(matches!(parse_enums(&bad), Err(BtfError::BadHeaderLen { .. })));

    let huge = vec![0u8; MAX_BTF_BYTES + 1];
    assert!(matches!(parse_enums(&huge), Err(BtfError::TooLarge { .. })));
}

#[test]
fn btf_sections_out_of_bounds() {
    let blob = full_blob();
    let mut bad = blob.clone();
    let type_len = u32_at(&bad, 12).unwrap();
    set_u32(&mut bad, 12, type_len + 1_000);
    assert!(matches!(parse_enums(&bad), Err(BtfError::SectionOutOfBounds { section: "type", .. })));
    set_u32(&mut bad, 12, u32::MAX);
    set_u32(&mut bad, 8, u32::MAX);
    assert!(matches!(parse_enums(&bad), Err(BtfError::SectionOutOfBounds { section: "type", .. })));

    let mut bad = blob.clone();
    set_u32(&mut bad, 16, u32::MAX - 2);
    assert!(matches!(parse_enums(&bad), Err(BtfError::SectionOutOfBounds { section: "string", .. })));

    // truncating the blob cuts the string section
    assert!(matches!(
        parse_enums(&blob[..blob.len() - 1]),
        Err(BtfError::SectionOutOfBounds { section: "string", .. })
    ));
}

#[test]
fn btf_type_record_cut() {
    let mut b = Builder::new();
    map_enum(&mut b);
    let blob = b.build();
    let type_len = u32_at(&blob, 12).unwrap();
    // cut inside the enumerators, then inside the struct btf_type
    for cut in [type_len - 4, 8] {
        let mut bad = blob.clone();
        set_u32(&mut bad, 12, cut);
        assert!(
            matches!(parse_enums(&bad), Err(BtfError::TypeTruncated { type_id: 1, offset: 24 })),
            "cut at {cut}: {:?}",
            parse_enums(&bad)
        );
    }
}

#[test]
fn btf_unknown_kind() {
    let mut b = Builder::new();
    b.ty("int", 1, 0, 4);
    b.words(&[32]);
    b.ty("future", 20, 0, 0);
    assert!(matches!(parse_enums(&b.build()), Err(BtfError::UnknownKind { type_id: 2, offset: 40, kind: 20 })));
    let mut b = Builder::new();
    b.ty("", 0, 0, 0);
    assert!(matches!(parse_enums(&b.build()), Err(BtfError::UnknownKind { kind: 0, .. })));
}

#[test]
fn btf_bad_strings() {
    // a type name past the string section
    let mut b = Builder::new();
    b.words(&[1_000, 2 << 24, 0]);
    assert!(matches!(parse_enums(&b.build()), Err(BtfError::StringOutOfBounds { type_id: 1, name_off: 1_000, .. })));

    // an enumerator name past the string section
    let mut b = Builder::new();
    let name = b.str("bpf_map_type");
    b.words(&[name, (6 << 24) | 1, 4, 5_000, 1]);
    assert!(matches!(parse_enum(&b.build(), Kind::Map), Err(BtfError::StringOutOfBounds { name_off: 5_000, .. })));

    // a string section that does not end in NUL
    let mut b = Builder::new();
    b.words(&[1, (6 << 24) | 1, 4, 0, 1]);
    b.strings.extend_from_slice(b"bpf_map_type");
    assert!(matches!(parse_enum(&b.build(), Kind::Map), Err(BtfError::UnterminatedString { name_off: 1, .. })));

    // an enumerator name that is not an identifier
    let mut b = Builder::new();
    b.enum32("bpf_map_type", &[("BPF_MAP_TYPE_HASH,any", 1)]);
    assert!(matches!(parse_enum(&b.build(), Kind::Map), Err(BtfError::InvalidName { .. })));
}

/// xorshift64*, so the fuzz-ish tests need no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }
}

fn real_blob() -> Option<Vec<u8>> {
    match std::fs::read(VMLINUX_BTF_PATH) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipping: {VMLINUX_BTF_PATH}: {e}");
            None
        }
    }
}

#[test]
fn btf_never_panics_on_prefixes_and_flips() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let small = full_blob();
    for cut in 0..=small.len() {
        let _ = parse_enums(&small[..cut]);
        // also with the header's type_len pointing at the cut
        let mut b = small.clone();
        set_u32(&mut b, 12, u32::try_from(cut.saturating_sub(24)).unwrap());
        let _ = parse_enums(&b);
    }
    for _ in 0..20_000 {
        let mut b = small.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len());
            b[i] ^= u8::try_from(1 + rng.below(255)).unwrap();
        }
        let _ = parse_enums(&b);
    }

    let Some(real) = real_blob() else { return };
    let type_len = usize::try_from(u32_at(&real, 12).unwrap()).unwrap();
    let mut mid_record = 0;
    for i in 0..400 {
        let cut = real.len() * i / 400;
        assert!(parse_enums(&real[..cut]).is_err());
        // keep the sections in bounds but end the type section at a
        // (mostly mid-record) cut point
        let mut b = real.clone();
        set_u32(&mut b, 12, u32::try_from(type_len * i / 400).unwrap());
        if matches!(parse_enums(&b), Err(BtfError::TypeTruncated { .. })) {
            mid_record += 1;
        }
    }
    assert!(mid_record > 100, "only {mid_record} cuts fell inside a record");
    for _ in 0..100 {
        let mut b = real.clone();
        for _ in 0..1 + rng.below(8) {
            let i = if rng.below(4) == 0 { rng.below(64) } else { rng.below(b.len()) };
            b[i] ^= u8::try_from(1 + rng.below(255)).unwrap();
        }
        let _ = parse_enums(&b);
    }
}
