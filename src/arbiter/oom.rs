//! Telling an out-of-memory kill from any other SIGKILL, and sampling the workers' memory.
//!
//! Only the kernel log says *which* process the OOM killer ended: its record names the pid ("Killed
//! process 1234 (…)", "oom-kill:…,pid=1234,…"). The master follows `/dev/kmsg` from its start and, when a
//! worker dies by a SIGKILL it did not send, reads what the kernel logged since and looks for that pid. A
//! pid is forgotten when a worker is spawned with it, so a record about an earlier process that had the
//! same pid (pids are reused, as soon as after 32768 forks on a default kernel) never blames the new
//! worker.
//!
//! The cgroup's count of OOM kills (`oom_kill` in `memory.events` on cgroup v2, in `memory.oom_control`
//! on v1) only says that the OOM killer struck *some* process of the cgroup, which all workers share; it
//! decides nothing by itself. Where the kernel log cannot be read, a count unchanged during the worker's
//! life still rules the OOM killer out, and a count that rose leaves the cause unknown, which the master
//! then says rather than guess.

use std::collections::VecDeque;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

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

pub const KERNEL_LOG: &str = "/dev/kmsg";
/// OOM-killed pids remembered at most (older ones are dropped; a dead worker is looked up right away).
const REMEMBERED: usize = 1024;
/// The kernel sends the OOM victim its SIGKILL before it logs "Killed process": a worker can be reaped
/// before its record is written. The master looks again for this long before concluding there is none.
const RECORD_WAIT: Duration = Duration::from_millis(200);

/// The kernel log as the master follows it.
pub struct KernelLog {
    /// Open at the end of what the kernel had logged; None when the log cannot be read here (no
    /// `/dev/kmsg`, no permission, as in many containers, or nothing in it).
    file: Option<fs::File>,
    /// Pids the OOM killer's records named, since each was last given to a new worker.
    oom_killed: VecDeque<i32>,
}

impl KernelLog {
    pub fn open() -> KernelLog {
        KernelLog {
            file: open_at_end(),
            oom_killed: VecDeque::new(),
        }
    }

    /// In a freshly forked worker: the app must not inherit a descriptor of the kernel log (the worker may
    /// run as a user who could not open it).
    pub fn close_in_child(&self) {
        if let Some(f) = &self.file {
            // SAFETY: closing a descriptor this (child) process inherited and will never use; the File
            // owning it is not dropped in the child (the worker never returns to the master's code).
            unsafe { libc::close(f.as_raw_fd()) };
        }
    }

    /// A worker was just spawned with `pid`: what the log says about an earlier process with that pid is
    /// not about it.
    pub fn forget(&mut self, pid: i32) {
        self.read_new();
        self.oom_killed.retain(|p| *p != pid);
    }

    /// Whether the OOM killer ended `pid` since it was spawned; None when the log cannot be read.
    pub fn names_oom_kill(&mut self, pid: i32) -> Option<bool> {
        self.file.as_ref()?;
        let until = std::time::Instant::now() + RECORD_WAIT;
        loop {
            self.read_new();
            if self.oom_killed.contains(&pid) {
                return Some(true);
            }
            if std::time::Instant::now() >= until {
                return Some(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Read the records logged since the last read, remembering the pids the OOM killer names.
    fn read_new(&mut self) {
        let Some(f) = self.file.as_mut() else { return };
        let mut record = vec![0u8; 8192];
        // Each read returns one record. EAGAIN: nothing more for now. EPIPE: records were overwritten
        // before they were read; the next read goes on from the oldest one left. Bounded in any case.
        for _ in 0..100_000 {
            match f.read(&mut record) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(pid) = oom_victim(&String::from_utf8_lossy(&record[..n])) {
                        if self.oom_killed.len() >= REMEMBERED {
                            self.oom_killed.pop_front();
                        }
                        self.oom_killed.push_back(pid);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
    }
}

/// `/dev/kmsg`, opened without blocking and placed after its last record, if one record can be read.
fn open_at_end() -> Option<fs::File> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(KERNEL_LOG)
        .ok()?;
    let mut record = vec![0u8; 8192];
    // A log that yields no record at all (an empty stand-in) cannot name a victim either.
    match f.read(&mut record) {
        Ok(n) if n > 0 => {}
        _ => return None,
    }
    // SEEK_END on /dev/kmsg: the next read returns the next record the kernel logs.
    f.seek(SeekFrom::End(0)).ok()?;
    Some(f)
}

/// The pid an OOM killer record names, if the record is one: "…Killed process 1234 (name) total-vm…"
/// (every kernel) or "oom-kill:constraint=…,task=name,pid=1234,uid=0" (4.19 and later). The record is
/// `/dev/kmsg`'s: "priority,sequence,time,flags;message" and continuation lines.
/// Only the kernel's own records count (facility 0, so a priority below 8): a program may write to
/// `/dev/kmsg` too, and a userspace OOM killer is "another process".
fn oom_victim(record: &str) -> Option<i32> {
    let (prefix, message) = record.split_once(';')?;
    let priority: u32 = prefix.split(',').next()?.parse().ok()?;
    if priority >= 8 {
        return None;
    }
    let number_after = |marker: &str| -> Option<i32> {
        let rest = &message[message.find(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    if message.contains("Killed process ") {
        return number_after("Killed process ");
    }
    if message.starts_with("oom-kill:") {
        return number_after(",pid=");
    }
    None
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
    fn the_oom_killers_records_name_their_victim() {
        // Records as /dev/kmsg gives them (6.x kernel, memory cgroup v1).
        let killed = "3,420,703753742,-;Memory cgroup out of memory: Killed process 17424 (ferricorn-wrk) total-vm:368436kB, anon-rss:302740kB, file-rss:6764kB, shmem-rss:0kB, UID:0 pgtables:672kB oom_score_adj:0\n";
        assert_eq!(oom_victim(killed), Some(17424));
        let summary = "6,419,703753698,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a,task_memcg=/a,task=ferricorn-wrk,pid=17424,uid=0\n";
        assert_eq!(oom_victim(summary), Some(17424));
        // The process table the kernel prints before choosing is not a kill.
        let table = "6,418,703753696,-;[  17424]     0 17424    92109    77376    75685     1691         0   688128        0             0 ferricorn-wrk\n";
        assert_eq!(oom_victim(table), None);
        assert_eq!(
            oom_victim("6,1,0,-;Command line: console=ttyS0 pid=3\n"),
            None
        );
        // Written to /dev/kmsg by a program (facility 1, user): not the kernel's OOM killer.
        assert_eq!(
            oom_victim("14,7,9,-;Killed process 812 (python) by earlyoom\n"),
            None
        );
        // Older kernels: "Kill process" picks the victim, "Killed process" reports it.
        assert_eq!(
            oom_victim(
                "3,5,9,-;Out of memory: Kill process 812 (python) score 901 or sacrifice child\n"
            ),
            None
        );
        assert_eq!(
            oom_victim(
                "3,6,9,-;Killed process 812 (python) total-vm:1kB, anon-rss:1kB, file-rss:0kB\n"
            ),
            Some(812)
        );
    }

    #[test]
    fn rss_of_self_is_known() {
        let rss = rss_bytes(std::process::id() as i32).expect("statm");
        assert!(rss > 0);
    }
}
