//! Man pages and shell completions generated from the CLI definitions,
//! so they cannot drift from it.

use super::*;

/// Write the man page of `cmd` and, generated from the same definitions
/// so that they cannot drift, one of each visible subcommand
/// (`bpftoken-run.1`, ...), into `dir`.
pub(super) fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    fn write(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, dir)?;
        }
        clap_mangen::Man::new(cmd.clone())
            .source(concat!("bpftokend ", env!("CARGO_PKG_VERSION")))
            .generate_to(dir)
            .map(drop)
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write(&cmd, dir)
}

/// `cmd` (named `name`) without its hidden, internal subcommands, which
/// clap_complete would otherwise offer: completion offers what `--help`
/// lists.
pub(super) fn completable(cmd: &clap::Command, name: &'static str) -> clap::Command {
    let visible: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    clap::Command::new(name).version(env!("CARGO_PKG_VERSION")).args(cmd.get_arguments().cloned()).subcommands(visible)
}

/// Write `shell`'s completion script of `cmd` into `dir`, named as that
/// shell's completion directory expects.
pub(super) fn write_completions(mut cmd: clap::Command, shell: CompletionShell, dir: &Path) -> std::io::Result<()> {
    let name = cmd.get_name().to_owned();
    let (generator, file) = match shell {
        CompletionShell::Bash => (clap_complete::Shell::Bash, name.clone()),
        CompletionShell::Zsh => (clap_complete::Shell::Zsh, format!("_{name}")),
        CompletionShell::Fish => (clap_complete::Shell::Fish, format!("{name}.fish")),
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut cmd, name, &mut script);
    std::fs::write(dir.join(file), script)
}
