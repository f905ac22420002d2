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
        let mut man = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut man).unwrap();
        out.push((format!("docs/man/{name}.1"), man));
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
        for words in ["Examples", "token-file", "Exit status", protocol.as_str()] {
            assert!(text.contains(words), "{rel} lacks {words:?}");
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
