//! The documentation cannot drift from the code or lose its way:
//!
//! - `bpftoken man DIR` and `bpftokend man DIR` write one page per visible
//!   subcommand (those `--help` lists), each naming what it does and
//!   describing every option, and no page for anything else (hidden
//!   subcommands stay internal); so a new subcommand without docs fails;
//! - every relative link in README.md and docs/*.md reaches an existing
//!   file, and heading where it names one, and every code comment citing
//!   `docs/FILE.md, "Heading"` names an existing heading;
//! - README.md stays a front page (at most 200 lines): details live in
//!   docs/ and the man pages.
//! - `bpftoken completions SHELL DIR` and `bpftokend completions SHELL DIR`
//!   write bash, zsh and fish scripts, generated from the same definitions,
//!   that offer every visible subcommand and no internal one.
//!
//! Needs no root; outside CI a binary not built yet skips the man-page
//! test with a printed reason, with `CI=true` it fails.

use std::collections::{BTreeMap, BTreeSet};
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

#[test]
fn completions_offer_every_visible_subcommand() {
    let test = "completions_offer_every_visible_subcommand";
    // The scripts' names, as each shell's completion directory expects.
    let files = |name: &str| [("bash", name.to_owned()), ("zsh", format!("_{name}")), ("fish", format!("{name}.fish"))];
    for (name, internal) in [("bpftoken", &["learn-exec", "userns-holder"][..]), ("bpftokend", &[][..])] {
        let Some(bin) = built(test, name) else { return };
        let subcommands = listed_subcommands(&bin);
        assert!(!subcommands.is_empty(), "{name} --help lists no subcommand");
        let dir = std::env::temp_dir().join(format!("bpftoken-completions-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the completion directory");
        for (shell, file) in files(name) {
            let o = output({
                let mut c = Command::new(&bin);
                c.args(["completions", shell]).arg(&dir);
                c
            });
            assert!(o.status.success(), "{name} completions {shell}: {}", stderr(&o));
            let script = std::fs::read_to_string(dir.join(&file))
                .unwrap_or_else(|e| panic!("{name} completions {shell} wrote no {file}: {e}"));
            for sub in &subcommands {
                assert!(script.contains(sub.as_str()), "{file} does not offer `{name} {sub}`");
            }
            for hidden in internal {
                assert!(!script.contains(hidden), "{file} offers the internal `{name} {hidden}`");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces
/// made hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks), with
/// GitHub's `-1`, `-2` suffixes for repeated ones.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose_lines(text) {
        let Some(heading) = line.strip_prefix('#').map(|h| h.trim_start_matches('#')) else { continue };
        if !heading.starts_with(' ') {
            continue;
        }
        let base = anchor(heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The targets of inline links `[text](target)` of a Markdown file, outside
/// code blocks and code spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        // Drop code spans: `a](b)` inside backticks is not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn relative_links_in_the_readme_and_docs_resolve() {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a Markdown file");
        for target in link_targets(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, fragment) = target.split_once('#').map_or((target.as_str(), None), |(p, f)| (p, Some(f)));
            let resolved = if path.is_empty() { file.clone() } else { file.parent().expect("parent").join(path) };
            let shown = format!("{}: {target}", file.strip_prefix(&root).unwrap_or(file).display());
            if !resolved.exists() {
                broken.push(format!("{shown} (no such file)"));
                continue;
            }
            let Some(fragment) = fragment else { continue };
            let is_markdown = resolved.extension().is_some_and(|e| e == "md");
            let text = if is_markdown { std::fs::read_to_string(&resolved).unwrap_or_default() } else { String::new() };
            if !is_markdown || !anchors(&text).contains(fragment) {
                broken.push(format!("{shown} (no heading with that anchor)"));
            }
        }
    }
    assert!(broken.is_empty(), "broken relative links:\n{}", broken.join("\n"));
    assert!(checked > 0, "no relative link found: is the link parser broken?");
}

/// Rust files under `dir`, build output and hidden directories aside.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Code comments point into the docs as `docs/FILE.md, "Heading"`: each
/// such heading exists, so a renamed section cannot strand them.
#[test]
fn code_comments_cite_existing_doc_sections() {
    let root = repo();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a Rust file");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("docs/") {
            rest = &rest[i + "docs/".len()..];
            let Some(end) = rest.find(".md, \"") else { continue };
            let doc = &rest[..end];
            if doc.is_empty()
                || !doc.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                continue;
            }
            let title_start = &rest[end + ".md, \"".len()..];
            let Some(title_end) = title_start.find('"') else { continue };
            let title = &title_start[..title_end];
            checked += 1;
            let target = root.join("docs").join(format!("{doc}.md"));
            let headings = anchors(&std::fs::read_to_string(&target).unwrap_or_default());
            if !headings.contains(&anchor(title)) {
                let shown = file.strip_prefix(&root).unwrap_or(file).display().to_string();
                broken.push(format!("{shown}: docs/{doc}.md, \"{title}\""));
            }
        }
    }
    assert!(broken.is_empty(), "comments cite sections that do not exist:\n{}", broken.join("\n"));
    assert!(checked > 0, "no citation found: is the parser broken?");
}

#[test]
fn the_readme_stays_a_front_page() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let lines = readme.lines().count();
    assert!(lines <= 200, "README.md has {lines} lines (at most 200): move details to docs/ or a man page");
}

#[test]
fn anchors_follow_github() {
    assert_eq!(anchor("Enforcement (BPF LSM)"), "enforcement-bpf-lsm");
    assert_eq!(
        anchor("Using tokens with bpftool, libbpf and containers"),
        "using-tokens-with-bpftool-libbpf-and-containers"
    );
    assert_eq!(anchor("`bpftoken revoke`: who may end what"), "bpftoken-revoke-who-may-end-what");
    let text = "# A\n```\n# not a heading\n```\n## A\n";
    assert_eq!(anchors(text), BTreeSet::from(["a".to_owned(), "a-1".to_owned()]));
    assert_eq!(link_targets("see [x](a.md#b) and `[y](not.md)`"), ["a.md#b"]);
}
