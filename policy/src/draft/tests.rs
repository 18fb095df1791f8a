//! Drop-ins merged with the main file, and every error of every file
//! collected in one run (docs/policy.md, "Drop-in files").

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bpftoken_proto::{MintRequest, RefusalCode};

use crate::btf::KernelNames;
use crate::{load_with, Decision, NameResolver, Peer, Policy, PolicyError, Source};

const MAIN: &str = "/etc/bpftokend/policy.toml";

/// Knows alice (1000) and bob (1001), group bpf-dev (2000), and lists
/// them for suggestions as the system database would.
struct Accounts;

impl NameResolver for Accounts {
    fn uid_of(&self, user: &str) -> Option<u32> {
        match user {
            "alice" => Some(1000),
            "bob" => Some(1001),
            _ => None,
        }
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        (group == "bpf-dev").then_some(2000)
    }
    fn user_names(&self) -> Vec<String> {
        vec!["alice".into(), "bob".into(), "root".into()]
    }
    fn group_names(&self) -> Vec<String> {
        vec!["bpf-dev".into(), "root".into()]
    }
}

fn source(path: &str, text: &str) -> Source {
    Source { path: PathBuf::from(path), text: text.to_owned() }
}

fn set(main: &str, dropins: &[(&str, &str)]) -> Result<Policy, crate::PolicyErrors> {
    let dropins: Vec<Source> = dropins.iter().map(|(p, t)| source(p, t)).collect();
    Policy::parse_set(&source(MAIN, main), &dropins, &Accounts, &KernelNames::builtin()).finish()
}

fn messages(e: &crate::PolicyErrors) -> Vec<String> {
    e.errors().iter().map(ToString::to_string).collect()
}

fn peer(uid: u32) -> Peer {
    Peer { uid, gid: uid, ..Peer::default() }
}

#[test]
fn every_mistake_of_a_file_is_reported_in_one_run() {
    let text = "\
[[allow]]
name = \"devs\"
user = [\"alice\"]
groups = [\"bpf-devs\"]
progs = [\"BPF_PROG_TYPE_XDP\"]
cmds = [\"BPF_MAP_CREATE\", \"prog_laod\"]

[[allow]]
name = \"ops\"
users = [\"alcie\"]
maps = [\"hash\"]
ttl = \"1h\"
";
    let e = set(text, &[]).unwrap_err();
    assert_eq!(
        messages(&e),
        [
            "/etc/bpftokend/policy.toml:3:1: unknown key `user` (did you mean `users`?)",
            "/etc/bpftokend/policy.toml:4:11: unknown group \"bpf-devs\" (did you mean \"bpf-dev\"?)",
            "/etc/bpftokend/policy.toml:5:10: unknown program type \"BPF_PROG_TYPE_XDP\" (did you mean \"xdp\"? the \
             policy spells kernel names in lowercase without `BPF_PROG_TYPE_`)",
            "/etc/bpftokend/policy.toml:6:9: unknown command \"BPF_MAP_CREATE\" (did you mean \"map_create\"? the \
             policy spells kernel names in lowercase without `BPF_`)",
            "/etc/bpftokend/policy.toml:6:27: unknown command \"prog_laod\" (did you mean \"prog_load\"?)",
            "/etc/bpftokend/policy.toml:10:10: unknown user \"alcie\" (did you mean \"alice\"?)",
            "/etc/bpftokend/policy.toml:12:7: invalid type: string \"1h\", expected i64",
        ]
    );
    // One line for status lines and logs; all of them rendered.
    assert_eq!(
        e.to_string(),
        "/etc/bpftokend/policy.toml:3:1: unknown key `user` (did you mean `users`?) (and 6 more errors)"
    );
    assert_eq!(e.render().lines().filter(|l| l.trim() == "^").count(), 7, "{}", e.render());
    assert!(e.render().starts_with(
        "/etc/bpftokend/policy.toml:3:1: unknown key `user` (did you mean `users`?)\n    user = [\"alice\"]\n    ^\n\
         /etc/bpftokend/policy.toml:4:11:"
    ));
}

#[test]
fn a_syntax_error_stops_its_file_but_not_the_others() {
    let e = set(
        "[[allow]]\nusers = [\"alice\"\n",
        &[("/etc/bpftokend/policy.d/a.toml", "[[allow]]\nusers = [\"bob\"]\nmaps = [\"hashh\"]\n")],
    )
    .unwrap_err();
    assert_eq!(
        messages(&e),
        [
            "/etc/bpftokend/policy.toml:3:1: invalid array, expected `]`",
            "/etc/bpftokend/policy.d/a.toml:3:9: unknown map type \"hashh\" (did you mean \"hash\"?)",
        ]
    );
}

#[test]
fn dropins_append_rules_in_lexical_order_and_grant() {
    let main = "[[allow]]\nusers = [\"alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";
    // Given out of order: merged by path.
    let p = set(
        main,
        &[
            ("/etc/bpftokend/policy.d/20-b.toml", "[[deny]]\nusers = [\"bob\"]\nmaps = [\"queue\"]\n"),
            (
                "/etc/bpftokend/policy.d/10-a.toml",
                "[[allow]]\nusers = [\"bob\"]\ncmds = [\"map_create\"]\nmaps = [\"hash\", \"queue\"]\n\n[[allow]]\n\
                 name = \"alice-hash\"\nusers = [\"alice\"]\nmaps = [\"hash\"]\n",
            ),
        ],
    )
    .unwrap();
    assert_eq!(
        p.dropins(),
        [Path::new("/etc/bpftokend/policy.d/10-a.toml"), Path::new("/etc/bpftokend/policy.d/20-b.toml")]
    );
    let labels: Vec<(&str, &Path, usize)> =
        p.rules().iter().chain(p.deny_rules()).map(|r| (r.label.as_str(), r.file.as_path(), r.line)).collect();
    assert_eq!(
        labels,
        [
            ("allow[0]", Path::new(MAIN), 1),
            ("10-a.toml:allow[0]", Path::new("/etc/bpftokend/policy.d/10-a.toml"), 1),
            ("alice-hash", Path::new("/etc/bpftokend/policy.d/10-a.toml"), 6),
            ("20-b.toml:deny[0]", Path::new("/etc/bpftokend/policy.d/20-b.toml"), 1),
        ]
    );
    // A rule only in a drop-in grants; a drop-in's deny removes.
    match p.decide(&peer(1001), &MintRequest::default()) {
        Decision::Grant { delegation, rules, .. } => {
            assert_eq!(
                delegation.maps,
                bpftoken_proto::delegation::parse_list(bpftoken_proto::delegation::Kind::Map, "hash").unwrap()
            );
            assert_eq!(rules, ["10-a.toml:allow[0]", "20-b.toml:deny[0]"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.effective(&peer(1000)).allowed_by, ["allow[0]", "alice-hash"]);
    // Refusals still name the main file.
    let Decision::Refuse { code, message, .. } = p.decide(&peer(1002), &MintRequest::default()) else { panic!() };
    assert_eq!(
        (code, message.as_str()),
        (RefusalCode::NotInPolicy, "no rule in /etc/bpftokend/policy.toml allows uid 1002 (gid 1002)")
    );
}

#[test]
fn settings_belong_to_the_main_file_and_cover_the_dropins() {
    let dropin = "/etc/bpftokend/policy.d/x.toml";
    let e = set(
        "[[allow]]\nusers = [\"alice\"]\ncmds = [\"map_create\"]\n",
        &[(dropin, "require_enforcement = false\nacknowledge_broad_grants = true\n")],
    )
    .unwrap_err();
    assert_eq!(
        messages(&e),
        [
            "/etc/bpftokend/policy.d/x.toml:1:1: `require_enforcement` is a setting of the whole policy: only the main \
             file (/etc/bpftokend/policy.toml) may set it; a drop-in holds only [[allow]] and [[deny]] rules",
            "/etc/bpftokend/policy.d/x.toml:2:1: `acknowledge_broad_grants` is a setting of the whole policy: only the \
             main file (/etc/bpftokend/policy.toml) may set it; a drop-in holds only [[allow]] and [[deny]] rules",
        ]
    );
    // A broad grant in a drop-in needs the main file's acknowledgement.
    let broad = "[[allow]]\neveryone = true\ncmds = [\"any\"]\n";
    let e = set("", &[(dropin, broad)]).unwrap_err();
    assert_eq!(
        messages(&e),
        ["/etc/bpftokend/policy.d/x.toml:1:1: rule \"x.toml:allow[0]\" grants `any` cmds to everyone; if that is \
          really meant, set `acknowledge_broad_grants = true` at the top of the main policy file"]
    );
    let p = set("acknowledge_broad_grants = true\nrequire_enforcement = false\n", &[(dropin, broad)]).unwrap();
    assert_eq!(
        p.warnings(),
        ["/etc/bpftokend/policy.d/x.toml:1: rule \"x.toml:allow[0]\" grants `any` cmds to everyone (acknowledged)"]
    );
    assert!(!p.require_enforcement());
}

#[test]
fn rule_names_are_unique_across_files() {
    let rule = |name: &str| format!("[[allow]]\nname = \"{name}\"\nusers = [\"alice\"]\ncmds = [\"map_create\"]\n");
    let e = set(&rule("devs"), &[("/etc/bpftokend/policy.d/a.toml", &format!("\n{}", rule("devs")))]).unwrap_err();
    assert_eq!(
        messages(&e),
        ["/etc/bpftokend/policy.d/a.toml:3:8: rule name \"devs\" is used twice, at /etc/bpftokend/policy.toml:1 and \
          /etc/bpftokend/policy.d/a.toml:2; audit events name rules by it, so each name must be unique"]
    );
    // A name equal to an unnamed rule's label in another file.
    let unnamed = "[[allow]]\nusers = [\"alice\"]\ncmds = [\"map_create\"]\n";
    let e = set(unnamed, &[("/etc/bpftokend/policy.d/a.toml", &rule("allow[0]"))]).unwrap_err();
    assert_eq!(
        messages(&e),
        ["/etc/bpftokend/policy.d/a.toml:2:8: rule name \"allow[0]\" (/etc/bpftokend/policy.d/a.toml:1) is the label \
          of the unnamed rule at /etc/bpftokend/policy.toml:1; audit events name rules by it, so choose another name"]
    );
    // Across tables too, the later file's name is the one pointed at.
    let deny = "[[deny]]\nname = \"x\"\nusers = [\"bob\"]\nmaps = [\"hash\"]\n";
    let e = set(deny, &[("/etc/bpftokend/policy.d/a.toml", &rule("x"))]).unwrap_err();
    assert_eq!(
        messages(&e),
        ["/etc/bpftokend/policy.d/a.toml:2:8: rule name \"x\" is used twice, at /etc/bpftokend/policy.toml:1 and \
          /etc/bpftokend/policy.d/a.toml:1; audit events name rules by it, so each name must be unique"]
    );
    // Unnamed rules of different files never collide.
    set(unnamed, &[("/etc/bpftokend/policy.d/a.toml", unnamed), ("/etc/bpftokend/policy.d/b.toml", unnamed)]).unwrap();
}

#[test]
fn errors_come_in_file_order_and_host_checks_add_theirs() {
    let main = "[[allow]]\nname = \"agent\"\nusers = [\"alice\"]\nexecutables = [\"/usr/sbin/agent\"]\ncmds = [\"map_create\"]\n\
                maps = [\"arry\"]\n";
    let dropin = "[[allow]]\nname = \"svc\"\nusers = [\"bob\"]\ncgroups = [\"/system.slice/a.service\"]\ncmds = [\"prog_lod\"]\n";
    let mut draft = Policy::parse_set(
        &source(MAIN, main),
        &[source("/etc/bpftokend/policy.d/a.toml", dropin)],
        &Accounts,
        &KernelNames::builtin(),
    );
    assert_eq!(draft.errors().len(), 2);
    draft.check_identity_enforcement(Some("no BPF LSM"));
    let e = draft.finish().unwrap_err();
    let got = messages(&e);
    let want = [
        "/etc/bpftokend/policy.toml:4:16: rule \"agent\" matches on `executables`, which only the enforcer",
        "/etc/bpftokend/policy.toml:6:9: unknown map type \"arry\" (did you mean \"array\"?)",
        "/etc/bpftokend/policy.d/a.toml:4:12: rule \"svc\" matches on `cgroups`, which only the enforcer",
        "/etc/bpftokend/policy.d/a.toml:5:9: unknown command \"prog_lod\" (did you mean \"prog_load\"?)",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (got, want) in got.iter().zip(want) {
        assert!(got.starts_with(want), "{got}\nshould start with\n{want}");
    }
}

#[test]
fn a_misplaced_name_says_which_list_it_belongs_in() {
    let e =
        set("[[allow]]\nusers = [\"alice\"]\nprogs = [\"hash\"]\nmaps = [\"BPF_MAP_TYPE_ARRAY\", \"kprobe\"]\n", &[])
            .unwrap_err();
    assert_eq!(
        messages(&e),
        [
            "/etc/bpftokend/policy.toml:3:10: unknown program type \"hash\" (\"hash\" is a map type: it belongs in \
             `maps`)",
            "/etc/bpftokend/policy.toml:4:9: unknown map type \"BPF_MAP_TYPE_ARRAY\" (did you mean \"array\"? the \
             policy spells kernel names in lowercase without `BPF_MAP_TYPE_`)",
            "/etc/bpftokend/policy.toml:4:31: unknown map type \"kprobe\" (\"kprobe\" is a program type: it belongs \
             in `progs`)",
        ]
    );
}

// ---- reading the drop-in directory ----

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn scratch() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("bpftoken-dropin-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("policy.d")).unwrap();
    for dir in [&d, &d.join("policy.d")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    d
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn load(path: &Path) -> Result<Policy, crate::PolicyErrors> {
    load_with(path, me(), &Accounts, &KernelNames::builtin())
}

#[test]
fn the_directory_is_read_and_only_toml_files_count() {
    let d = scratch();
    let main = d.join("policy.toml");
    write(&main, "[[allow]]\nusers = [\"alice\"]\ncmds = [\"map_create\"]\n");
    let rule = "[[allow]]\nusers = [\"bob\"]\ncmds = [\"map_create\"]\n";
    write(&d.join("policy.d/b.toml"), rule);
    write(&d.join("policy.d/a.toml"), rule);
    // Not drop-ins: backups, package leftovers, hidden files, other names.
    for ignored in ["a.toml~", "a.toml.dpkg-old", "a.toml.dpkg-dist", ".a.toml.swp", ".hidden.toml", "README", ".toml"]
    {
        write(&d.join("policy.d").join(ignored), "this is not TOML [[[");
    }
    // An editor's lock file is a dangling symlink named like a hidden drop-in.
    std::os::unix::fs::symlink("root@host.1234", d.join("policy.d/.#a.toml")).unwrap();
    std::fs::create_dir(d.join("policy.d/sub.d")).unwrap();
    let p = load(&main).unwrap();
    assert_eq!(p.dropins(), [d.join("policy.d/a.toml"), d.join("policy.d/b.toml")]);
    assert_eq!(p.rules().len(), 3);
    // No directory: no drop-ins.
    std::fs::remove_dir_all(d.join("policy.d")).unwrap();
    assert!(load(&main).unwrap().dropins().is_empty());
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn unsafe_dropins_are_refused_each_naming_its_file() {
    let d = scratch();
    let main = d.join("policy.toml");
    write(&main, "[[allow]]\nusers = [\"alice\"]\ncmds = [\"map_create\"]\n");
    let dir = d.join("policy.d");
    write(&dir.join("a.toml"), "[[allow]]\nusers = [\"bob\"]\ncmds = [\"map_create\"]\n");
    write(&dir.join("b.toml"), "");
    std::fs::set_permissions(dir.join("b.toml"), std::fs::Permissions::from_mode(0o666)).unwrap();
    write(&d.join("elsewhere.toml"), "");
    std::os::unix::fs::symlink(d.join("elsewhere.toml"), dir.join("c.toml")).unwrap();
    std::fs::create_dir(dir.join("d.toml")).unwrap();
    write(&dir.join("e.toml"), "[[allow]]\nusers = [\"bob\"]\ncmds = [\"map_creat\"]\n");
    let e = load(&main).unwrap_err();
    let b = dir.join("b.toml");
    assert_eq!(
        messages(&e),
        [
            format!(
                "refusing policy {}: the file is writable by group or others (mode 0666; chmod go-w {})",
                b.display(),
                b.display()
            ),
            format!("refusing policy {}: it is a symbolic link", dir.join("c.toml").display()),
            format!("refusing policy {}: it is not a regular file", dir.join("d.toml").display()),
            format!(
                "{}:3:9: unknown command \"map_creat\" (did you mean \"map_create\"?)",
                dir.join("e.toml").display()
            ),
        ]
    );
    // A writable directory: nothing in it is read.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = load(&main).unwrap_err();
    assert_eq!(
        messages(&e),
        [format!(
            "refusing policy {}: the directory is writable by group or others (mode 0777; chmod go-w {})",
            dir.display(),
            dir.display()
        )]
    );
    // A symlink to a directory is refused too.
    std::fs::rename(&dir, d.join("real.d")).unwrap();
    std::fs::set_permissions(d.join("real.d"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(d.join("real.d"), &dir).unwrap();
    let e = load(&main).unwrap_err();
    assert_eq!(messages(&e), [format!("refusing policy {}: it is a symbolic link or not a directory", dir.display())]);
    assert!(matches!(e.errors(), [PolicyError::Unsafe { .. }]));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_missing_main_file_still_has_its_dropins_checked() {
    let d = scratch();
    write(&d.join("policy.d/a.toml"), "[[allow]]\nusers = [\"bobb\"]\ncmds = [\"map_create\"]\n");
    let main = d.join("policy.toml");
    let e = load(&main).unwrap_err();
    assert_eq!(
        messages(&e),
        [
            format!("cannot open policy {}: No such file or directory (os error 2)", main.display()),
            format!("{}:2:10: unknown user \"bobb\" (did you mean \"bob\"?)", d.join("policy.d/a.toml").display()),
        ]
    );
    let _ = std::fs::remove_dir_all(d);
}
