//! Log setup shared by both binaries: `-v`/`-vv` or `RUST_LOG`, lines prefixed with the program
//! and escaped, so that no text from a peer can drive the terminal.

use std::io::Write;

/// Routes `log` records to stderr as `PROGRAM: message` (`PROGRAM: warning: message` above info).
/// `verbose` counts `-v` flags over `base` (0 = warnings, 1 = info, 2 = debug); `RUST_LOG`
/// overrides both.
pub fn init_logging(program: &'static str, base: u8, verbose: u8, quiet: bool) {
    let level = match (quiet, base.saturating_add(verbose)) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        (false, 2) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format(move |buf, record| {
            // Whatever a message quotes from a peer, no control character reaches the terminal.
            let text = record.args().to_string();
            let text = crate::name::Escaped(&text);
            match record.level() {
                log::Level::Info => writeln!(buf, "{program}: {text}"),
                log::Level::Warn => writeln!(buf, "{program}: warning: {text}"),
                l => writeln!(buf, "{program}: {}: {text}", l.as_str().to_lowercase()),
            }
        })
        .init();
}
