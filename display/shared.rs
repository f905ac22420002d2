//! Output formatting that is the same in zsend and zrecv: the error line, rates in summary
//! lines, and the parts of JSON lines both write (the schema version, the stage times).
//! Included by both binaries as the module `shared`.

use std::time::Duration;

use zcommon::{Bytes, Escaped, StageTimes};

/// The `version` of every JSON line (docs/JSON.md).
pub const JSON_VERSION: u32 = 2;

/// The line a failure ends the program with. The chain of errors may quote a peer: escaped, as
/// every peer text.
pub fn print_error(program: &str, err: &anyhow::Error) {
    eprintln!("{program}: {}", Escaped(&format!("{err:#}")));
}

/// The seconds a transfer took, never zero: rates divide by it.
pub fn seconds(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64().max(1e-9)
}

/// `bytes` over `secs` seconds, per second.
pub fn rate(bytes: u64, secs: f64) -> Bytes {
    Bytes((bytes as f64 / secs) as u64)
}

/// The stage times `keep` keeps, as the JSON object `stages`: `{"network_cpu_s": 0.01, ...}`.
pub fn stages_json(stages: &StageTimes, keep: impl Fn(&str) -> bool) -> serde_json::Value {
    stages
        .as_pairs()
        .into_iter()
        .filter(|(name, _)| keep(name))
        .map(|(name, secs)| (name.to_owned(), serde_json::json!(secs)))
        .collect()
}
