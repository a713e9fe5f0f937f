//! Telling an out-of-memory kill from any other SIGKILL, and sampling the workers' memory.
//!
//! The kernel keeps a count of OOM kills per memory cgroup: `oom_kill` in `memory.events` (cgroup v2) or in
//! `memory.oom_control` (cgroup v1). The workers live in the master's cgroup, so the master reads that
//! counter before and after a worker dies by SIGKILL it did not send. Where no counter is readable, the
//! kernel log (`/dev/kmsg`) is searched for the OOM killer's line naming the pid.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Where this process's cgroup counts OOM kills.
pub struct OomCounter {
    path: Option<PathBuf>,
}

impl OomCounter {
    pub fn for_self() -> OomCounter {
        OomCounter {
            path: find_counter(),
        }
    }

    /// The cgroup's OOM kill count, if the kernel exposes it here.
    pub fn count(&self) -> Option<u64> {
        let text = fs::read_to_string(self.path.as_ref()?).ok()?;
        parse_oom_kill(&text)
    }

    pub fn source(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }
}

/// `oom_kill N` from memory.events / memory.oom_control.
fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some("oom_kill"))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

fn find_counter() -> Option<PathBuf> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        // v1: "4:memory:/some/path"; v2: "0::/some/path".
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let p = PathBuf::from("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.oom_control");
            if p.exists() {
                return Some(p);
            }
        } else if controllers.is_empty() {
            let p = PathBuf::from("/sys/fs/cgroup")
                .join(rel)
                .join("memory.events");
            if p.exists() {
                return Some(p);
            }
        }
    }
    None
}

/// Whether the kernel log has the OOM killer's record of `pid`. Reads what `/dev/kmsg` holds without
/// blocking; false where it is not readable (containers often hide it).
pub fn kernel_log_names_oom(pid: i32) -> bool {
    let Ok(mut f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return false;
    };
    let needle = format!("Killed process {pid} ");
    let mut record = vec![0u8; 8192];
    // Each read returns one record; stop at EAGAIN (end of the buffer) or after a bounded number.
    for _ in 0..100_000 {
        match f.read(&mut record) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let line = String::from_utf8_lossy(&record[..n]);
                if line.contains(&needle)
                    || (line.contains("oom-kill") && line.contains(&format!("pid={pid},")))
                {
                    return true;
                }
            }
        }
    }
    false
}

/// Resident memory of a process in bytes, from /proc/PID/statm.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * if page > 0 { page as u64 } else { 4096 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_count_is_parsed_from_both_formats() {
        let v2 = "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(parse_oom_kill(v1), Some(7));
        assert_eq!(parse_oom_kill("nothing here\n"), None);
    }

    #[test]
    fn rss_of_self_is_known() {
        let rss = rss_bytes(std::process::id() as i32).expect("statm");
        assert!(rss > 0);
    }
}
