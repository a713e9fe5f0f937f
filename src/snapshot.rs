//! Snapshots of what a worker's threads are doing, taken on demand: the Python stack of every thread
//! running a request, and the worker's most recently finished requests. `ferricornctl show stacks` and
//! `ferricornctl doctor` use them to say *where* a request in flight is (in a database driver, on the
//! network, in the app's code) and which request a connection's open transaction came from.
//!
//! Only the worker can read its own Python stacks (without the GIL, as `faulthandler` does), and the
//! master answers control requests without ever waiting for a worker. So the two meet in a second
//! `MAP_SHARED` mapping beside the scoreboard, one [`Area`] per scoreboard slot: the master bumps the
//! slot's `requested` counter whenever a client asks; the worker's supervision tick (every 500 ms) sees
//! the counter move, writes a snapshot into the area under a sequence counter (a seqlock, as the
//! scoreboard's strings) and sets `answered`. The client asks again until every worker has a snapshot
//! younger than its first request (see `control::client`), so no side ever blocks on the other.
//!
//! The recent requests come from [`History`], a small ring kept in the worker's own memory and filled
//! by each app thread as its request finishes.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::scoreboard::MAX_WORKERS;

/// Bytes of snapshot text per worker; a longer one is cut (see [`SnapshotWriter`]).
pub const AREA_LEN: usize = 64 * 1024;
/// Finished requests a worker remembers.
pub const HISTORY_LEN: usize = 64;
/// Longest request target kept in the history.
const TARGET_LEN: usize = 200;
/// Marks the start of a record line in the text, so that stack lines can never be taken for one.
const TAG: char = '\u{1e}';

#[repr(C)]
struct Area {
    /// Bumped by the master when a client asks for a snapshot.
    requested: AtomicU64,
    /// The `requested` value the current text answers.
    answered: AtomicU64,
    seq: AtomicU32,
    /// The worker that wrote the text (a slot is reused by later workers).
    pid: AtomicI32,
    len: AtomicU32,
    /// Monotonic ns when the text was written.
    taken_ns: AtomicU64,
    data: [AtomicU8; AREA_LEN],
}

/// The shared areas, mapped once by the master before the first fork and inherited by every worker.
#[derive(Clone, Copy)]
pub struct Snapshots {
    base: NonNull<Area>,
}

// SAFETY: every field of the mapping is an atomic; the mapping is never unmapped.
unsafe impl Send for Snapshots {}
unsafe impl Sync for Snapshots {}

static SNAPSHOTS: OnceLock<Snapshots> = OnceLock::new();

/// A snapshot as the master reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub pid: i32,
    pub taken_ns: u64,
    pub text: String,
}

impl Snapshots {
    /// Map the areas (the master, before it forks a worker). Calling it again is a no-op.
    pub fn create() -> std::io::Result<Snapshots> {
        if let Some(s) = SNAPSHOTS.get() {
            return Ok(*s);
        }
        let len = std::mem::size_of::<Area>() * MAX_WORKERS;
        // SAFETY: a fresh anonymous shared mapping; zeroed pages are a valid `Area` (all atomics 0).
        // MAP_NORESERVE: areas of slots never used cost neither memory nor commit charge.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr as *mut Area)
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        let s = Snapshots { base };
        Ok(*SNAPSHOTS.get_or_init(|| s))
    }

    /// The areas, when the master mapped them (in a worker: inherited).
    pub fn get() -> Option<Snapshots> {
        SNAPSHOTS.get().copied()
    }

    fn area(&self, slot: usize) -> Option<&Area> {
        // SAFETY: in range of the mapping, which is never unmapped.
        (slot < MAX_WORKERS).then(|| unsafe { &*self.base.as_ptr().add(slot) })
    }

    /// Ask the worker in `slot` for a new snapshot, unless one is being taken already.
    pub fn request(&self, slot: usize) {
        if let Some(a) = self.area(slot) {
            let answered = a.answered.load(Ordering::Acquire);
            let _ = a.requested.compare_exchange(
                answered,
                answered.wrapping_add(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// The latest snapshot of `slot` if `pid` wrote it.
    pub fn read(&self, slot: usize, pid: i32) -> Option<Snapshot> {
        let a = self.area(slot)?;
        for _ in 0..16 {
            let before = a.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let owner = a.pid.load(Ordering::Relaxed);
            let taken_ns = a.taken_ns.load(Ordering::Relaxed);
            let len = (a.len.load(Ordering::Relaxed) as usize).min(AREA_LEN);
            let bytes: Vec<u8> = a.data[..len]
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            fence(Ordering::Acquire);
            if a.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            if owner != pid || taken_ns == 0 {
                return None;
            }
            return Some(Snapshot {
                pid,
                taken_ns,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        None
    }

    /// In the worker of `slot`: the request number to answer, when the master asked for a snapshot.
    pub fn pending(&self, slot: usize) -> Option<u64> {
        let a = self.area(slot)?;
        let requested = a.requested.load(Ordering::Acquire);
        (requested != a.answered.load(Ordering::Acquire)).then_some(requested)
    }

    /// In the worker of `slot`: publish `text` (cut to the area) as the answer to request `answered`.
    pub fn publish(&self, slot: usize, answered: u64, text: &str) {
        let Some(a) = self.area(slot) else { return };
        let bytes = text.as_bytes();
        let n = bytes.len().min(AREA_LEN);
        let seq = a.seq.load(Ordering::Relaxed);
        a.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (d, b) in a.data.iter().zip(&bytes[..n]) {
            d.store(*b, Ordering::Relaxed);
        }
        a.len.store(n as u32, Ordering::Relaxed);
        a.pid.store(std::process::id() as i32, Ordering::Relaxed);
        a.taken_ns
            .store(crate::scoreboard::now_ns(), Ordering::Relaxed);
        fence(Ordering::Release);
        a.seq.store(seq.wrapping_add(2), Ordering::Release);
        a.answered.store(answered, Ordering::Release);
    }
}

/// A request a worker finished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finished {
    pub thread: usize,
    pub method: String,
    pub target: String,
    /// Monotonic ns.
    pub started_ns: u64,
    pub finished_ns: u64,
}

/// The worker's last [`HISTORY_LEN`] finished requests, oldest first.
pub struct History {
    ring: Mutex<VecDeque<Finished>>,
}

static HISTORY: History = History {
    ring: Mutex::new(VecDeque::new()),
};

impl History {
    /// This process's history.
    pub fn get() -> &'static History {
        &HISTORY
    }

    /// Called by an app thread as its request ends. Reuses the oldest entry's buffers once the ring is
    /// full, so a request costs no allocation.
    pub fn record(&self, thread: usize, method: &str, target: &str, started_ns: u64) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        let mut e = if ring.len() >= HISTORY_LEN {
            ring.pop_front().unwrap_or_default()
        } else {
            Finished::default()
        };
        e.thread = thread;
        e.method.clear();
        e.method.push_str(method);
        e.target.clear();
        let mut end = target.len().min(TARGET_LEN);
        while !target.is_char_boundary(end) {
            end -= 1;
        }
        e.target.push_str(&target[..end]);
        e.started_ns = started_ns;
        e.finished_ns = crate::scoreboard::now_ns();
        ring.push_back(e);
    }

    pub fn entries(&self) -> Vec<Finished> {
        self.ring
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Builds a snapshot's text within [`AREA_LEN`]: records are tagged lines, stack text follows its
/// record verbatim.
#[derive(Default)]
pub struct SnapshotWriter {
    text: String,
}

/// One record of a snapshot, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The Python stack of thread `thread`, running the request that started at `started_ns`.
    Stack {
        thread: usize,
        started_ns: u64,
        lines: Vec<String>,
    },
    Finished(Finished),
}

impl SnapshotWriter {
    /// The stack of a thread's request; `budget` bytes at most (the top of the stack, most recent call
    /// first, is kept; a cut is marked `  ...`).
    pub fn stack(&mut self, thread: usize, started_ns: u64, stack: &str, budget: usize) {
        self.text
            .push_str(&format!("{TAG}stack {thread} {started_ns}\n"));
        let mut used = 0;
        for line in stack.lines().filter(|l| !l.starts_with(TAG)) {
            if used + line.len() + 1 > budget {
                self.text.push_str("  ...\n");
                break;
            }
            used += line.len() + 1;
            self.text.push_str(line);
            self.text.push('\n');
        }
    }

    pub fn finished(&mut self, f: &Finished) {
        let target: String = f
            .target
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        self.text.push_str(&format!(
            "{TAG}done {} {} {} {} {}\n",
            f.thread, f.started_ns, f.finished_ns, f.method, target
        ));
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// The records of a snapshot's text (what [`SnapshotWriter`] wrote; a record cut off at the end of the
/// area is dropped).
pub fn parse(text: &str) -> Vec<Record> {
    let mut out = Vec::new();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for line in complete.lines() {
        if let Some(rec) = line.strip_prefix(TAG) {
            let mut w = rec.splitn(6, ' ');
            match w.next() {
                Some("stack") => {
                    let thread = w.next().and_then(|x| x.parse().ok());
                    let started = w.next().and_then(|x| x.parse().ok());
                    if let (Some(thread), Some(started_ns)) = (thread, started) {
                        out.push(Record::Stack {
                            thread,
                            started_ns,
                            lines: Vec::new(),
                        });
                    }
                }
                Some("done") => {
                    let mut num = || w.next().and_then(|x| x.parse::<u64>().ok());
                    let (thread, started_ns, finished_ns) = (num(), num(), num());
                    let method = w.next();
                    let target = w.next();
                    if let (Some(t), Some(s), Some(f), Some(m), Some(tg)) =
                        (thread, started_ns, finished_ns, method, target)
                    {
                        out.push(Record::Finished(Finished {
                            thread: t as usize,
                            method: m.to_string(),
                            target: tg.to_string(),
                            started_ns: s,
                            finished_ns: f,
                        }));
                    }
                }
                _ => {}
            }
        } else if let Some(Record::Stack { lines, .. }) = out.last_mut() {
            lines.push(line.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_cut() {
        let mut w = SnapshotWriter::default();
        let stack = "Stack (most recent call first):\n  File \"/a/psycopg/x.py\", line 3 in wait\n  File \"/app/views.py\", line 9 in view\n";
        w.stack(1, 42, stack, 1000);
        w.stack(0, 7, stack, 60);
        w.finished(&Finished {
            thread: 1,
            method: "GET".into(),
            target: "/lock-hold/?seconds=3 x".into(),
            started_ns: 5,
            finished_ns: 9,
        });
        let text = w.into_text();
        let recs = parse(&text);
        assert_eq!(recs.len(), 3, "{recs:?}");
        match &recs[0] {
            Record::Stack {
                thread,
                started_ns,
                lines,
            } => {
                assert_eq!((*thread, *started_ns), (1, 42));
                assert_eq!(lines.len(), 3);
                assert!(lines[1].contains("psycopg"));
            }
            r => panic!("{r:?}"),
        }
        match &recs[1] {
            Record::Stack { lines, .. } => assert_eq!(lines.last().unwrap(), "  ..."),
            r => panic!("{r:?}"),
        }
        match &recs[2] {
            Record::Finished(f) => assert_eq!(f.target, "/lock-hold/?seconds=3 x"),
            r => panic!("{r:?}"),
        }
        // A record cut in the middle of its line is dropped.
        let cut = &text[..text.len() - 3];
        assert_eq!(parse(cut).len(), 2);
    }

    #[test]
    fn history_is_bounded_and_ordered() {
        let h = History {
            ring: Mutex::new(VecDeque::new()),
        };
        for i in 0..HISTORY_LEN + 5 {
            h.record(0, "GET", &format!("/{i}"), i as u64);
        }
        let e = h.entries();
        assert_eq!(e.len(), HISTORY_LEN);
        assert_eq!(e[0].target, "/5");
        assert_eq!(e.last().unwrap().target, format!("/{}", HISTORY_LEN + 4));
        h.record(0, "GET", &"é".repeat(150), 1);
        assert!(h.entries().last().unwrap().target.len() <= TARGET_LEN);
    }

    #[test]
    fn request_and_answer_across_fork() {
        let s = Snapshots::create().expect("mmap");
        let slot = MAX_WORKERS - 1;
        assert_eq!(s.pending(slot), None);
        s.request(slot);
        s.request(slot); // still pending: not bumped twice
        let n = s.pending(slot).expect("pending");
        // SAFETY: the child only touches the shared mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            s.publish(slot, n, "hello\n");
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(s.pending(slot), None);
        let snap = s.read(slot, pid).expect("written by the child");
        assert_eq!(snap.text, "hello\n");
        assert!(s.read(slot, pid + 1).is_none(), "another worker's text");
    }
}
