//! Writes hyperxl's man pages (one per command: `hyperxl.1`, `hyperxl-run.1`,
//! `hyperxl-volume-create.1`, ...) and its bash, zsh and fish completions, from the
//! CLI's own definition, so they cannot drift from `--help`. Run by `scripts/package`:
//!
//!     cargo run -p hyperxl --example gen-docs -- OUT_DIR [DATE]
//!
//! Writes `OUT_DIR/man/*.1`, `OUT_DIR/completions/{hyperxl.bash,_hyperxl,hyperxl.fish}`.
//! DATE (e.g. the last commit's, for a reproducible package) dates the man pages.

use std::path::PathBuf;

use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-docs OUT_DIR [DATE]");
        std::process::exit(2);
    };
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;

    let date = std::env::args().nth(2);
    let mut cmd = hyperxl::command();
    render_all(cmd.clone(), &man, date.as_deref())?;
    for (shell, file) in [
        (Shell::Bash, "hyperxl.bash"),
        (Shell::Zsh, "_hyperxl"),
        (Shell::Fish, "hyperxl.fish"),
    ] {
        let mut f = std::fs::File::create(completions.join(file))?;
        clap_complete::generate(shell, &mut cmd, "hyperxl", &mut f);
    }
    Ok(())
}

/// One page per visible command, recursively, named `hyperxl-sub-sub.1`.
fn render_all(
    cmd: clap::Command,
    dir: &std::path::Path,
    date: Option<&str>,
) -> std::io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    render(cmd, dir, date)
}

fn render(cmd: clap::Command, dir: &std::path::Path, date: Option<&str>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        render(sub, dir, date)?;
    }
    let mut page = clap_mangen::Man::new(cmd).manual("hyperxl manual");
    if let Some(date) = date {
        page = page.date(date);
    }
    page.generate_to(dir)?;
    Ok(())
}
