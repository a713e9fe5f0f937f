//! The host's state as `ferricornctl doctor` sees it: load average against the CPUs, memory and swap
//! (`/proc/meminfo`), the kernel's OOM-kill counters (host-wide in `/proc/vmstat`, and the server's
//! memory cgroup: `memory.events` on cgroup v2, `memory.oom_control` on v1).
//!
//! Everything is read under a root directory, `/` normally. The hidden `--host-root DIR` option points
//! it at a tree of fake files, which is how the swap and OOM rules are tested: a test cannot create
//! swap or provoke the OOM killer on the machine that runs it.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostState {
    pub cpus: usize,
    pub load: Option<[f64; 3]>,
    pub mem_total_kib: Option<u64>,
    pub mem_available_kib: Option<u64>,
    pub swap_total_kib: Option<u64>,
    pub swap_free_kib: Option<u64>,
    /// `oom_kill` of `/proc/vmstat`: every OOM kill on the host since boot.
    pub host_oom_kills: Option<u64>,
    /// The server's memory cgroup counter (kills in that cgroup since it was created) and its file.
    pub cgroup_oom_kills: Option<(u64, String)>,
    /// Files that could not be read (reported as info, never fatal).
    pub unreadable: Vec<String>,
}

impl HostState {
    pub fn swap_used_kib(&self) -> Option<u64> {
        Some(self.swap_total_kib?.saturating_sub(self.swap_free_kib?))
    }
}

fn read(root: &Path, rel: &str, unreadable: &mut Vec<String>) -> Option<String> {
    let p = root.join(rel.trim_start_matches('/'));
    match std::fs::read_to_string(&p) {
        Ok(t) => Some(t),
        Err(_) => {
            unreadable.push(format!("/{}", rel.trim_start_matches('/')));
            None
        }
    }
}

/// `Key:   123 kB` of /proc/meminfo.
fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// `key N` lines (vmstat, memory.events, memory.oom_control).
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some(key)).then(|| w.next()?.parse().ok())?
    })
}

/// The memory cgroup's OOM counter file of `pid` (or this process), under `root`.
fn cgroup_counter(root: &Path, pid: Option<u32>) -> Option<PathBuf> {
    let who = pid.map_or("self".to_string(), |p| p.to_string());
    let text = std::fs::read_to_string(root.join(format!("proc/{who}/cgroup"))).ok()?;
    for line in text.lines() {
        // v1: "4:memory:/some/path"; v2: "0::/some/path".
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        let candidate = if controllers.split(',').any(|c| c == "memory") {
            root.join("sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.oom_control")
        } else if controllers.is_empty() {
            root.join("sys/fs/cgroup").join(rel).join("memory.events")
        } else {
            continue;
        };
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

/// Read the host's state under `root`; `pid` is the server's master, whose cgroup is the one that
/// matters (this process's when it is not known).
pub fn read_host(root: &Path, pid: Option<u32>) -> HostState {
    let mut h = HostState::default();
    let mut unreadable = Vec::new();
    h.cpus = if root == Path::new("/") {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        read(root, "proc/cpuinfo", &mut Vec::new())
            .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
            .filter(|n| *n > 0)
            .unwrap_or(1)
    };
    if let Some(t) = read(root, "proc/loadavg", &mut unreadable) {
        let v: Vec<f64> = t
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [a, b, c] = v[..] {
            h.load = Some([a, b, c]);
        }
    }
    if let Some(t) = read(root, "proc/meminfo", &mut unreadable) {
        h.mem_total_kib = meminfo(&t, "MemTotal");
        h.mem_available_kib = meminfo(&t, "MemAvailable");
        h.swap_total_kib = meminfo(&t, "SwapTotal");
        h.swap_free_kib = meminfo(&t, "SwapFree");
    }
    if let Some(t) = read(root, "proc/vmstat", &mut unreadable) {
        h.host_oom_kills = counter(&t, "oom_kill");
    }
    if let Some(p) = cgroup_counter(root, pid) {
        if let Some(n) = std::fs::read_to_string(&p)
            .ok()
            .and_then(|t| counter(&t, "oom_kill"))
        {
            // Reported as the path on the host, without the test root.
            let shown = p
                .strip_prefix(root)
                .map_or(p.clone(), |r| Path::new("/").join(r));
            h.cgroup_oom_kills = Some((n, shown.display().to_string()));
        }
    }
    h.unreadable = unreadable;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_root() {
        let root = std::env::temp_dir().join(format!("fcn-host-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::create_dir_all(root.join("sys/fs/cgroup/app")).unwrap();
        std::fs::write(root.join("proc/loadavg"), "3.50 2.00 1.00 2/100 999\n").unwrap();
        std::fs::write(
            root.join("proc/meminfo"),
            "MemTotal:        2000000 kB\nMemAvailable:     100000 kB\nSwapTotal:       1000000 kB\nSwapFree:         400000 kB\n",
        )
        .unwrap();
        std::fs::write(root.join("proc/vmstat"), "nr_free_pages 5\noom_kill 3\n").unwrap();
        std::fs::write(
            root.join("proc/cpuinfo"),
            "processor\t: 0\nprocessor\t: 1\n",
        )
        .unwrap();
        std::fs::write(root.join("proc/self/cgroup"), "0::/app\n").unwrap();
        std::fs::write(
            root.join("sys/fs/cgroup/app/memory.events"),
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
        )
        .unwrap();
        let h = read_host(&root, None);
        assert_eq!(h.cpus, 2);
        assert_eq!(h.load, Some([3.5, 2.0, 1.0]));
        assert_eq!(h.swap_used_kib(), Some(600000));
        assert_eq!(h.mem_available_kib, Some(100000));
        assert_eq!(h.host_oom_kills, Some(3));
        assert_eq!(
            h.cgroup_oom_kills,
            Some((2, "/sys/fs/cgroup/app/memory.events".to_string()))
        );
        assert!(h.unreadable.is_empty());
        let _ = std::fs::remove_dir_all(&root);
        // nothing readable: no panic, every file listed
        let h = read_host(&root, Some(1));
        assert_eq!(h.load, None);
        assert_eq!(h.unreadable.len(), 3);
    }
}
