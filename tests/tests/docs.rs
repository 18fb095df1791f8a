//! The documentation cannot drift from the code: `bpftoken man DIR` and
//! `bpftokend man DIR` write one page per visible subcommand (those
//! `--help` lists), each naming what it does and describing every option,
//! and no page for anything else (hidden subcommands stay internal); so a
//! new subcommand without docs fails.
//!
//! Needs no root; outside CI a binary not built yet skips the man-page
//! test with a printed reason, with `CI=true` it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use bpftoken_tests::{output, stderr, stdout};

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Where cargo put the workspace's binaries (test binaries live in
/// target/<profile>/deps, the others one up); `None` (a skip, or a failure
/// under `CI=true`) when `name` is not built.
fn built(test: &str, name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("own executable path");
    let dir = exe.parent().expect("executable directory");
    let dir = if dir.ends_with("deps") { dir.parent().expect("profile directory") } else { dir };
    let bin = dir.join(name);
    if bin.exists() {
        return Some(bin);
    }
    let why = format!("{} is not built (run cargo build --workspace first)", bin.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}, and CI=true");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// The subcommands `BIN --help` lists (clap's own `help` aside).
fn listed_subcommands(bin: &Path) -> Vec<String> {
    let o = output({
        let mut c = Command::new(bin);
        c.arg("--help");
        c
    });
    assert!(o.status.success(), "{} --help: {}", bin.display(), stderr(&o));
    let text = stdout(&o);
    let commands = text.split_once("\nCommands:\n").map_or("", |(_, rest)| rest);
    commands
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Options of a generated page (`.TP` entries under OPTIONS) that carry no
/// description line.
fn undescribed_options(page: &str) -> Vec<String> {
    let options = page.split_once(".SH OPTIONS\n").map_or("", |(_, rest)| rest);
    let options = options.split("\n.SH ").next().unwrap_or("");
    options
        .split(".TP\n")
        .skip(1)
        .filter_map(|entry| {
            let mut lines = entry.lines();
            let option = lines.next().unwrap_or("").to_owned();
            let described = lines.next().is_some_and(|l| !l.trim().is_empty() && !l.starts_with('.'));
            (!described).then_some(option)
        })
        .collect()
}

/// Render `page` with man(1), if it is installed: no warning, and the
/// output has the page's name in it.
fn renders_cleanly(page: &Path, name: &str) {
    let Ok(o) = Command::new("man")
        .args(["--warnings", "-E", "UTF-8", "-l", "-P", "cat"])
        .arg(page)
        .env("MANWIDTH", "100")
        .output()
    else {
        return;
    };
    assert!(o.status.success() && o.stderr.is_empty(), "man -l {}: {}", page.display(), stderr(&o));
    assert!(stdout(&o).contains(name), "man -l {} does not show {name}", page.display());
}

#[test]
fn every_subcommand_has_a_man_page_that_describes_it() {
    let test = "every_subcommand_has_a_man_page_that_describes_it";
    for (name, section) in [("bpftoken", "1"), ("bpftokend", "8")] {
        let Some(bin) = built(test, name) else { return };
        let subcommands = listed_subcommands(&bin);
        assert!(!subcommands.is_empty(), "{name} --help lists no subcommand");
        let dir = std::env::temp_dir().join(format!("bpftoken-docs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the page directory");
        let o = output({
            let mut c = Command::new(&bin);
            c.arg("man").arg(&dir);
            c
        });
        assert!(o.status.success(), "{name} man: {}", stderr(&o));

        let written: BTreeSet<String> = std::fs::read_dir(&dir)
            .expect("read the page directory")
            .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
            .collect();
        let wanted: BTreeSet<String> = std::iter::once(format!("{name}.{section}"))
            .chain(subcommands.iter().map(|s| format!("{name}-{s}.{section}")))
            .collect();
        assert_eq!(written, wanted, "{name} man writes a page per visible subcommand, and nothing else");

        let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect("read a page");
        let main_page = read(&format!("{name}.{section}"));
        let roff = |s: &str| s.replace('-', "\\-");
        for sub in &subcommands {
            let page_name = format!("{name}-{sub}");
            let page = read(&format!("{page_name}.{section}"));
            // NAME: "bpftoken\-run \- Run CMD with a BPF token ...".
            let about = page
                .split_once(".SH NAME\n")
                .and_then(|(_, rest)| rest.lines().next())
                .and_then(|l| l.strip_prefix(&format!("{} \\- ", roff(&page_name))))
                .unwrap_or("");
            assert!(!about.trim().is_empty(), "{page_name}({section}) does not say what it does:\n{page}");
            assert_eq!(
                undescribed_options(&page),
                Vec::<String>::new(),
                "{page_name}({section}): options without help"
            );
            assert!(
                main_page.contains(&format!("{}({section})", roff(&page_name))),
                "{name}({section}) does not list {page_name}({section})"
            );
            renders_cleanly(&dir.join(format!("{page_name}.{section}")), &page_name);
        }
        assert_eq!(undescribed_options(&main_page), Vec::<String>::new(), "{name}({section}): options without help");
        renders_cleanly(&dir.join(format!("{name}.{section}")), name);
        let _ = std::fs::remove_dir_all(&dir);
    }
    renders_cleanly(&repo().join("docs/bpftokend.policy.5"), "bpftokend.policy");
}
