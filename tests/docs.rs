//! The man pages and shell completions are generated from the clap definitions the binaries
//! use, and checked in; this test fails when they drift. To regenerate them:
//! `ZSEND_UPDATE_DOCS=1 cargo test --test integration docs`.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)]
#[path = "../sender/cli.rs"]
mod zsend_cli;

#[allow(dead_code)]
#[path = "../receiver/cli.rs"]
mod zrecv_cli;

/// Every generated file: its path in the repository and its content.
fn generated() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, cmd) in [
        ("zsend", zsend_cli::Cli::command()),
        ("zrecv", zrecv_cli::Cli::command()),
    ] {
        let (synopsis, files): (&[&str], &[(&str, &str)]) = match name {
            "zsend" => (
                &[
                    "zsend [OPTIONS] HOST:PORT FILE|DIR...",
                    "zsend [OPTIONS] --to HOST:PORT[,HOST:PORT...] FILE",
                    "zsend [OPTIONS] HOST:PORT - --name NAME",
                ],
                &[(
                    "/etc/zsend/token",
                    "A token file, as the examples use it (any path will do).",
                )],
            ),
            _ => (
                &[
                    "zrecv --listen [ADDR] --dir DIR [OPTIONS]",
                    "zrecv --dir DIR --list-partials | --remove-partials",
                ],
                &[
                    (
                        "DIR/.zrecv-*.part",
                        "A transfer in flight, or a partial kept to resume (hidden).",
                    ),
                    (
                        "DIR/.zrecv-*.resume",
                        "What a kept partial belongs to and how much it holds.",
                    ),
                    (
                        "contrib/systemd/zrecv.service",
                        "A hardened systemd unit, in the source tree.",
                    ),
                ],
            ),
        };
        out.push((
            format!("docs/man/{name}.1"),
            man_page(name, cmd.clone(), synopsis, files),
        ));
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), name, &mut script);
            out.push((format!("contrib/completions/{file}"), script));
        }
    }
    out
}

/// A man page: clap's title, name, description and options, and the sections a man page has
/// besides (synopsis as the user types it, exit status, environment, files, examples that fit
/// 80 columns, see also), from the same text `--help` shows.
fn man_page(name: &str, cmd: clap::Command, synopsis: &[&str], files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let after = cmd
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let man = clap_mangen::Man::new(cmd);
    let mut w = Vec::new();
    man.render_title(&mut w).unwrap();
    man.render_name_section(&mut w).unwrap();
    writeln!(w, ".SH SYNOPSIS").unwrap();
    for (k, line) in synopsis.iter().enumerate() {
        if k > 0 {
            writeln!(w, ".br").unwrap();
        }
        writeln!(w, "{}", roff(line)).unwrap();
    }
    man.render_description_section(&mut w).unwrap();
    man.render_options_section(&mut w).unwrap();
    let paragraphs: Vec<&str> = after.split("\n\n").collect();
    let mut examples = None;
    for p in &paragraphs {
        if let Some(rest) = p.strip_prefix("Examples:\n") {
            examples = Some(rest.to_owned());
        } else if p.starts_with("Exit status") {
            writeln!(w, ".SH \"EXIT STATUS\"\n{}", roff(&p.replace('\n', " "))).unwrap();
        } else {
            writeln!(w, ".SH NOTES\n{}", roff(&p.replace('\n', " "))).unwrap();
        }
    }
    writeln!(w, ".SH ENVIRONMENT").unwrap();
    for (var, what) in [
        (
            "ZSEND_TOKEN_FILE",
            "The token file, when --token-file is not given.",
        ),
        (
            "RUST_LOG",
            "What to log (error, warn, info, debug), over -v and -q.",
        ),
    ] {
        writeln!(w, ".TP\n\\fB{var}\\fR\n{}", roff(what)).unwrap();
    }
    writeln!(w, ".SH FILES").unwrap();
    for (file, what) in files {
        writeln!(w, ".TP\n\\fI{}\\fR\n{}", roff(file), roff(what)).unwrap();
    }
    writeln!(w, ".SH EXAMPLES").unwrap();
    // Each "  COMMAND   what it does" line: the command, then what it does below it, so that
    // nothing wraps at 80 columns; a line of spaces first continues the one before.
    for line in examples.unwrap_or_default().lines() {
        let trimmed = line.trim_start();
        if line.starts_with("   ") && trimmed.len() + 8 < line.len() {
            writeln!(w, "{}", roff(trimmed)).unwrap();
            continue;
        }
        let (command, what) = trimmed.split_once("  ").unwrap_or((trimmed, ""));
        writeln!(w, ".TP\n\\fB{}\\fR\n{}", roff(command), roff(what.trim())).unwrap();
    }
    let other = if name == "zsend" { "zrecv" } else { "zsend" };
    writeln!(
        w,
        ".SH \"SEE ALSO\"\n\\fB{other}\\fR(1), \\fBsendfile\\fR(2), \\fBsplice\\fR(2), \\fBsha256sum\\fR(1), \\fBrsync\\fR(1)"
    )
    .unwrap();
    w
}

/// Text as roff shows it literally.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\\\").replace('-', "\\-");
    match text.starts_with('.') || text.starts_with('\'') {
        true => format!("\\&{text}"),
        false => text,
    }
}

#[test]
fn man_pages_and_completions_match_the_command_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("ZSEND_UPDATE_DOCS").is_some();
    let mut stale = Vec::new();
    for (rel, content) in generated() {
        let path = root.join(&rel);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&content[..]) {
            stale.push(rel);
        }
    }
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}; run ZSEND_UPDATE_DOCS=1 cargo test --test integration docs"
    );
}

#[test]
fn the_man_pages_say_what_matters() {
    for (rel, content) in generated() {
        if !rel.ends_with(".1") {
            continue;
        }
        let text = String::from_utf8(content).unwrap().replace("\\-", "-");
        let protocol = format!("protocol {}", zcommon::VERSION);
        for words in ["token-file", "Exit status", protocol.as_str()] {
            assert!(text.contains(words), "{rel} lacks {words:?}");
        }
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "\"EXIT STATUS\"",
            "ENVIRONMENT",
            "FILES",
            "EXAMPLES",
            "\"SEE ALSO\"",
        ] {
            assert!(
                text.contains(&format!("\n.SH {section}\n")),
                "{rel} lacks {section}"
            );
        }
        // As man shows it on an 80-column terminal: nothing wraps.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let shown = std::process::Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(root.join(&rel))
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .expect("man (scripts/test installs it)");
        // Bold and underline come as overstrikes ("N\x08N"): keep the last of each.
        let mut plain = String::new();
        for c in String::from_utf8_lossy(&shown.stdout).chars() {
            match c {
                '\u{8}' => {
                    plain.pop();
                }
                c => plain.push(c),
            }
        }
        assert!(plain.contains("EXAMPLES"), "{rel}: {plain}");
        for line in plain.lines() {
            assert!(line.chars().count() <= 80, "{rel}: wider than 80: {line:?}");
        }
    }
}

#[test]
fn version_names_the_protocol_this_build_speaks() {
    let want = format!("(protocol {})", zcommon::VERSION);
    assert!(
        zsend_cli::VERSION.ends_with(&want),
        "{}",
        zsend_cli::VERSION
    );
    assert!(
        zrecv_cli::VERSION.ends_with(&want),
        "{}",
        zrecv_cli::VERSION
    );
    for bin in [crate::util::zsend_bin(), crate::util::zrecv_bin()] {
        let out = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains(&want), "{bin}: {text}");
        let name = Path::new(bin).file_name().unwrap().to_str().unwrap();
        assert!(text.starts_with(name), "{bin}: {text}");
    }
}

/// --help shows examples of the common jobs.
#[test]
fn help_shows_the_common_jobs() {
    let help = |bin: &str| {
        let out = std::process::Command::new(bin)
            .arg("--help")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let zsend = help(crate::util::zsend_bin());
    for job in [
        "disk.img",
        "--token-file",
        " - --name",
        "again after an interruption",
        "--to ",
    ] {
        assert!(zsend.contains(job), "zsend --help lacks {job:?}");
    }
    let zrecv = help(crate::util::zrecv_bin());
    for job in [
        "--dir /srv/images",
        "--token-file",
        "--stdout",
        "--allow-forward",
    ] {
        assert!(zrecv.contains(job), "zrecv --help lacks {job:?}");
    }
}

/// Every test docs/SECURITY.md names as proof of a promise exists: `module::name` in
/// tests/module.rs (or, for a unit test, in common/src/module.rs or a file below it), and a
/// bare test name somewhere in the tests.
#[test]
fn the_tests_security_md_names_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/SECURITY.md")).unwrap();
    let mut sources = Vec::new();
    for dir in ["tests", "common/src", "common/tests"] {
        for entry in walkdir(&root.join(dir)) {
            sources.push((entry.clone(), std::fs::read_to_string(&entry).unwrap()));
        }
    }
    let defines = |file: &dyn Fn(&Path) -> bool, name: &str| {
        sources.iter().any(|(path, text)| {
            file(path)
                && (name == "*" && text.contains("#[test]")
                    || text.contains(&format!("fn {name}(")))
        })
    };
    let mut missing = Vec::new();
    for quoted in doc.split('`').skip(1).step_by(2) {
        let is_ident = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let found = match quoted.split_once("::") {
            Some((module, name)) if is_ident(module) && (is_ident(name) || name == "*") => {
                let in_module = |p: &Path| {
                    p.file_stem().is_some_and(|s| s == module)
                        || p.parent()
                            .and_then(Path::file_name)
                            .is_some_and(|d| d == module)
                };
                defines(&in_module, name)
            }
            None if is_ident(quoted) && quoted.matches('_').count() >= 3 => {
                defines(&|_| true, quoted)
            }
            _ => true,
        };
        if !found {
            missing.push(quoted.to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "SECURITY.md names tests that do not exist: {missing:?}"
    );
}

/// Every `.rs` file below `dir`.
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}
