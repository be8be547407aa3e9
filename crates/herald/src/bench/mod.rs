//! `herald bench audience` and `herald bench delivery`: the brand-alert
//! pipeline measured against a reference doing the same work in the same run
//! on the same machine, as DESIGN.md asks of every benchmark.
//!
//! - [`audience`]: building a large alert's audience on the embedded store
//!   and bus, against raw SQLite inserting the same number of queue rows.
//! - [`delivery`]: the mailer sending through SMTP into Postfix's
//!   `smtp-sink`, against Postfix's `smtp-source` into the same sink.
//!
//! Both generate their data in a fresh temporary folder (not measured, its
//! time printed apart), check their counts against the database and fail
//! rather than print a figure for work that was not all done.

pub mod audience;
mod dataset;
pub mod delivery;
pub mod ingest;
pub mod routing;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

pub use audience::{
    run_audience_bench, run_build_phase, AudienceBenchOptions, AudienceBenchReport,
    BuildMeasurement, BuildPhaseOptions, BuildProcess,
};
pub use delivery::{
    run_delivery_bench, run_delivery_rounds, DeliveryBenchOptions, DeliveryBenchReport,
    DeliveryRounds,
};
pub use ingest::{run_ingest_bench, IngestBenchOptions, IngestBenchReport};
pub use routing::{run_routing_bench, RoutingBenchOptions, RoutingBenchReport};

/// A folder of one benchmark run, removed with everything in it on drop.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// A new folder under `parent`, or under the system's temporary folder.
    fn create(parent: Option<&Path>) -> anyhow::Result<RunDir> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = parent.join(format!("herald-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the folder {}", path.display()))?;
        Ok(RunDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // A folder left behind in the temporary folder is harmless; the
        // run's own outcome matters more than reporting this.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Flushes a finished phase's files to disk, so their write-back does not
/// slow down the phase measured after it.
fn flush_to_disk(files: &[PathBuf]) -> anyhow::Result<()> {
    for file in files.iter().filter(|f| f.exists()) {
        std::fs::File::open(file)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot flush {}", file.display()))?;
    }
    Ok(())
}

/// A SQLite database file with its write-ahead log and shared-memory index.
fn sqlite_files(db: &Path) -> Vec<PathBuf> {
    let mut files = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    files
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Resident memory of this process, from `/proc/self/status` (Linux).
mod memory {
    /// Resets the process's peak resident size (`VmHWM`) to its current
    /// resident size; false where the kernel does not offer it.
    pub fn reset_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    /// `VmRSS` in bytes.
    pub fn resident() -> anyhow::Result<u64> {
        status_field("VmRSS")
    }

    /// `VmHWM` in bytes: the peak resident size since start or the last
    /// [`reset_peak`].
    pub fn peak() -> anyhow::Result<u64> {
        status_field("VmHWM")
    }

    fn status_field(name: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| anyhow::anyhow!("cannot read /proc/self/status to measure memory: {e}"))?;
        parse_status_field(&status, name)
            .ok_or_else(|| anyhow::anyhow!("/proc/self/status has no readable {name} line"))
    }

    /// The value of a `Name:   123 kB` line, in bytes.
    pub(super) fn parse_status_field(status: &str, name: &str) -> Option<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?;
        let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_in_bytes() {
        let status = "Name:\therald\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(
            memory::parse_status_field(status, "VmHWM"),
            Some(200 * 1024 * 1024)
        );
        assert_eq!(
            memory::parse_status_field(status, "VmRSS"),
            Some(100 * 1024 * 1024)
        );
        assert_eq!(memory::parse_status_field(status, "VmSwap"), None);
        assert_eq!(
            memory::parse_status_field("VmRSS:\tlots kB\n", "VmRSS"),
            None
        );
        assert_eq!(memory::parse_status_field("VmRSS:\t12 MB\n", "VmRSS"), None);
    }

    #[test]
    fn this_process_reports_its_memory() {
        let resident = memory::resident().unwrap();
        let peak = memory::peak().unwrap();
        assert!(resident > 0 && peak >= resident, "{resident} {peak}");
    }

    #[test]
    fn the_run_folder_goes_away_with_its_contents() {
        let parent = std::env::temp_dir();
        let dir = RunDir::create(Some(&parent)).unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("file"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn sqlite_files_name_the_log_and_index() {
        let files = sqlite_files(Path::new("/tmp/x/herald.db"));
        assert_eq!(
            files,
            vec![
                PathBuf::from("/tmp/x/herald.db"),
                PathBuf::from("/tmp/x/herald.db-wal"),
                PathBuf::from("/tmp/x/herald.db-shm"),
            ]
        );
    }
}
