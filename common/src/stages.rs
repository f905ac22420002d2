//! Where the time of a transfer goes, stage by stage, for `-v`, `--json` and the benchmark.

use std::time::Duration;

/// CPU time the calling thread has used so far.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU (and fsync wall) time of each stage of one transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    /// Sender: CPU of the sendfile loop. Receiver: CPU of splicing socket -> pipe.
    pub network_cpu: Duration,
    /// Receiver: CPU of splicing pipe -> file (the kernel's copy into the page cache).
    pub file_cpu: Duration,
    /// CPU of the hashing threads (reading back through the page cache, and the tree root).
    pub hash_cpu: Duration,
    /// Sender: CPU of the plain SHA-256 (`--sha256`).
    pub sha256_cpu: Duration,
    /// Receiver: wall time of the final fsyncs of the file and the directory.
    pub fsync: Duration,
}

impl StageTimes {
    /// Adds another transfer's times to these (a tree's files).
    pub fn add(&mut self, other: &StageTimes) {
        self.network_cpu += other.network_cpu;
        self.file_cpu += other.file_cpu;
        self.hash_cpu += other.hash_cpu;
        self.sha256_cpu += other.sha256_cpu;
        self.fsync += other.fsync;
    }

    /// The stages as a JSON-friendly list of (name, seconds).
    pub fn as_pairs(&self) -> [(&'static str, f64); 5] {
        [
            ("network_cpu_s", self.network_cpu.as_secs_f64()),
            ("file_cpu_s", self.file_cpu.as_secs_f64()),
            ("hash_cpu_s", self.hash_cpu.as_secs_f64()),
            ("sha256_cpu_s", self.sha256_cpu.as_secs_f64()),
            ("fsync_s", self.fsync.as_secs_f64()),
        ]
    }
}
