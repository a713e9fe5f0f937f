//! Logging for the server: the error log (`error`) that the master and the
//! workers share, and the per-request access log (`access`).
//!
//! Both must produce the same bytes as gunicorn's so that existing log
//! parsing and alerting keep working. Both write each record with a single
//! `write(2)` so several processes can share one file.

mod access;
mod capture;
pub use capture::redirect;
mod error;
mod sink;
mod time;

pub use access::{AccessLog, AccessRecord, EnvironLookup, DEFAULT_ACCESS_LOG_FORMAT};
pub use error::{count_records_with, Counted, ErrorLog, Level};

#[cfg(test)]
mod test_util {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory removed again when the test ends.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            static SEQ: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "ferricorn-log-{}-{}-{name}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        pub(crate) fn path(&self, file: &str) -> String {
            self.0.join(file).to_string_lossy().into_owned()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn read(path: &str) -> String {
        String::from_utf8(std::fs::read(path).expect("read log")).expect("log is UTF-8")
    }
}
