//! The scoreboard: one `MAP_SHARED` anonymous mapping, created by the master before the first fork, with a
//! fixed-size slot per worker and, inside it, one entry per Python thread.
//!
//! Workers write their own slot (heartbeat of the I/O loop, state, requests served, the request each thread
//! is running); the master reads every slot on each tick to enforce `--timeout` and, later, to report who is
//! busy with what. Fields are atomics so that a reader in another process never sees a torn integer; the
//! short strings of a request (method, path, client) are guarded by a per-entry sequence counter (a seqlock)
//! because they are written and read by different processes without any lock that both could share.
//!
//! Each slot also accumulates what the metrics report (`metrics`, served by the master): finished requests
//! by method and status class with a fixed duration histogram ([`RequestStats`]), counted events
//! ([`Event`]: timeouts, slow requests, loopback calls), why the worker began to stop by itself
//! ([`StopReason`]), and each app thread's liveness beat. Workers only add to these at a request's end
//! (one relaxed atomic add per field); the master reads them, and folds a dead worker's totals into its own
//! before the slot is reused, so that counters never go backwards.

use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// How many worker slots the mapping holds. `TTIN` can grow the worker count past the configured number, so
/// the table is sized generously; an untouched slot costs no resident memory.
pub const MAX_WORKERS: usize = 512;
/// How many Python threads per worker the scoreboard can describe; more threads still run, but only the
/// first `MAX_THREADS` are shown.
pub const MAX_THREADS: usize = 128;

/// How many simultaneous loopback calls per worker the scoreboard can name.
pub const MAX_LOOPBACK_PORTS: usize = 64;

/// The methods requests are counted by; any other method counts as `other`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
/// Status classes requests are counted by; `other` is a request that ended without a status (the
/// runtime never learnt one).
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
/// Upper bounds (seconds) of the request-duration histogram's buckets, `+Inf` implied after the last.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const BUCKETS: usize = DURATION_BUCKETS.len();

/// Events a worker counts in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request ran past `--timeout` (the worker answered 504 and retires).
    Timeout = 0,
    /// A request was still running at `--slow-request-threshold`.
    SlowRequest = 1,
    /// A loopback call (a request of this server calling it over HTTP) moved to the overflow lane.
    LoopbackCall = 2,
    /// The worker added app threads (elastic threads, `worker::elastic`).
    ThreadsUp = 3,
    /// The worker retired app threads it had added.
    ThreadsDown = 4,
}
pub const EVENTS: usize = 5;

/// Why a worker began to stop by itself, written in its slot for the master's restart causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum StopReason {
    None = 0,
    /// It served `--max-requests`.
    MaxRequests = 1,
    /// A request ran past `--timeout`.
    Timeout = 2,
}

/// The index of a method in [`METHODS`].
pub fn method_index(method: &str) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// The index of a status in [`STATUS_CLASSES`].
pub fn status_index(status: u16) -> usize {
    match status {
        100..=599 => (status / 100 - 1) as usize,
        _ => STATUS_CLASSES.len() - 1,
    }
}

/// One (method, status class) cell of a slot's request statistics.
#[repr(C)]
struct StatCell {
    count: AtomicU64,
    /// Summed durations in microseconds.
    sum_us: AtomicU64,
    /// Requests per bucket (not cumulative); those above the last bound are `count` less their sum.
    buckets: [AtomicU64; BUCKETS],
}

/// Finished requests by method and status class, read out of a slot (or summed over several).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestStats {
    /// `[method][status]`: (count, summed microseconds, per-bucket counts, not cumulative).
    pub cells: [[(u64, u64, [u64; BUCKETS]); STATUS_CLASSES.len()]; METHODS.len()],
    pub events: [u64; EVENTS],
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats {
            cells: [[(0, 0, [0; BUCKETS]); STATUS_CLASSES.len()]; METHODS.len()],
            events: [0; EVENTS],
        }
    }
}

impl RequestStats {
    pub fn add(&mut self, other: &RequestStats) {
        for (mine, theirs) in self
            .cells
            .iter_mut()
            .flatten()
            .zip(other.cells.iter().flatten())
        {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
            for (a, b) in mine.2.iter_mut().zip(theirs.2.iter()) {
                *a += b;
            }
        }
        for (a, b) in self.events.iter_mut().zip(other.events.iter()) {
            *a += b;
        }
    }

    /// Requests counted, over every method and status.
    pub fn total(&self) -> u64 {
        self.cells.iter().flatten().map(|c| c.0).sum()
    }

    /// The duration histogram over every method and status: per-bucket counts (not cumulative), then
    /// those above the last bound.
    pub fn histogram(&self) -> ([u64; BUCKETS], u64) {
        let mut b = [0u64; BUCKETS];
        let mut over = 0;
        for c in self.cells.iter().flatten() {
            for (a, x) in b.iter_mut().zip(c.2.iter()) {
                *a += x;
            }
            over += c.0 - c.2.iter().sum::<u64>().min(c.0);
        }
        (b, over)
    }
}

const METHOD_LEN: usize = 16;
const PATH_LEN: usize = 192;
const CLIENT_LEN: usize = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum WorkerState {
    Free = 0,
    Booting = 1,
    Idle = 2,
    Busy = 3,
    Stopping = 4,
}

/// The state as `show workers` and the health answers name it.
pub fn state_name(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Free => "free",
        WorkerState::Booting => "booting",
        WorkerState::Idle => "idle",
        WorkerState::Busy => "busy",
        WorkerState::Stopping => "stopping",
    }
}

impl WorkerState {
    fn from_u32(v: u32) -> WorkerState {
        match v {
            1 => WorkerState::Booting,
            2 => WorkerState::Idle,
            3 => WorkerState::Busy,
            4 => WorkerState::Stopping,
            _ => WorkerState::Free,
        }
    }
}

#[repr(C)]
struct ThreadEntry {
    seq: AtomicU32,
    /// Monotonic ns when the request started; 0 when the thread is idle.
    started_ns: AtomicU64,
    method: [AtomicU8Array; METHOD_LEN],
    path: [AtomicU8Array; PATH_LEN],
    client: [AtomicU8Array; CLIENT_LEN],
    /// A [`Wait`]: what an event loop's task is waiting for (always `InApp` for a thread).
    wait: AtomicU32,
}

/// What an ASGI request's task is waiting for, as `show workers` tells it. Only the waits the server
/// itself resolves are known; anything else is the app's own code or its own awaits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wait {
    #[default]
    InApp = 0,
    Body = 1,
    ClientRead = 2,
    Message = 3,
    Disconnect = 4,
}

impl Wait {
    fn from_u32(v: u32) -> Wait {
        match v {
            1 => Wait::Body,
            2 => Wait::ClientRead,
            3 => Wait::Message,
            4 => Wait::Disconnect,
            _ => Wait::InApp,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Wait::InApp => "in the app",
            Wait::Body => "awaiting the request body",
            Wait::ClientRead => "awaiting the client to read the response",
            Wait::Message => "awaiting a websocket message",
            Wait::Disconnect => "awaiting http.disconnect",
        }
    }
}

/// Bytes are stored as relaxed atomics: the seqlock orders them, and atomics keep the cross-process reads
/// free of undefined behaviour even when a read races with a write.
type AtomicU8Array = std::sync::atomic::AtomicU8;

#[repr(C)]
struct WorkerSlot {
    pid: AtomicI32,
    state: AtomicU32,
    generation: AtomicU32,
    booted_ns: AtomicU64,
    heartbeat_ns: AtomicU64,
    requests: AtomicU64,
    /// Client ports of this worker's open connections to the server itself (loopback calls); 0 = empty.
    loopback_ports: [AtomicU32; MAX_LOOPBACK_PORTS],
    /// Requests in this worker's run queue, not taken by a thread yet (refreshed every
    /// `loopback::SCAN_INTERVAL`).
    queued: AtomicU32,
    /// The app threads the worker runs requests on now (they change with elastic threads); 0 until
    /// the worker publishes it.
    threads_now: AtomicU32,
    threads: [ThreadEntry; MAX_THREADS],
    /// A [`StopReason`]: why the worker began to stop by itself.
    stop_reason: AtomicU32,
    events: [AtomicU64; EVENTS],
    stats: [[StatCell; STATUS_CLASSES.len()]; METHODS.len()],
    /// Per app thread: when it last showed it was alive (monotonic ns; 0 = it never reported).
    thread_beat: [AtomicU64; MAX_THREADS],
    /// ASGI: the event loop's lag over the watchdog's last look, and how long it is overdue now (ns;
    /// see `asgi::bridge`).
    loop_lag_ns: AtomicU64,
    loop_overdue_ns: AtomicU64,
}

/// A snapshot of one thread's request, read consistently.
#[derive(Clone, Debug, Default)]
pub struct RequestInFlight {
    pub started_ns: u64,
    pub method: String,
    pub path: String,
    pub client: String,
    pub wait: Wait,
}

impl RequestInFlight {
    /// `GET /path from 127.0.0.1:5555` (`-` for a unix-socket client), as the log lines name a request.
    pub fn summary(&self) -> String {
        let client = if self.client.is_empty() {
            "-"
        } else {
            self.client.as_str()
        };
        format!("{} {} from {client}", self.method, self.path)
    }

    /// Seconds since the request started.
    pub fn age_secs(&self) -> f64 {
        now_ns().saturating_sub(self.started_ns) as f64 / 1e9
    }
}

/// The shared table. Cloning shares the same mapping (it is never unmapped: it lives as long as the process).
#[derive(Clone, Copy)]
pub struct Scoreboard {
    base: NonNull<WorkerSlot>,
    /// One past the highest slot ever claimed: scans stop there, so they touch only pages in use rather
    /// than the whole (mostly unallocated) table.
    used: NonNull<AtomicUsize>,
}

// SAFETY: every field of the mapping is an atomic; the pointer itself is never freed.
unsafe impl Send for Scoreboard {}
unsafe impl Sync for Scoreboard {}

/// An anonymous `MAP_SHARED` mapping of `len` zeroed bytes, inherited by every forked worker.
fn shared_zeroed(len: usize) -> std::io::Result<NonNull<u8>> {
    // SAFETY: a fresh anonymous mapping; nothing else refers to it yet.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(ptr as *mut u8).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

/// Monotonic clock in nanoseconds; `CLOCK_MONOTONIC` is system-wide, so values compare across processes.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Scoreboard {
    /// Map the table. Must be called before the first fork so every worker inherits the same pages.
    pub fn create() -> std::io::Result<Scoreboard> {
        // Zeroed pages are a valid `WorkerSlot` and `AtomicUsize` (all atomics at 0).
        let base = shared_zeroed(std::mem::size_of::<WorkerSlot>() * MAX_WORKERS)?;
        let used = shared_zeroed(std::mem::size_of::<AtomicUsize>())?;
        Ok(Scoreboard {
            base: base.cast(),
            used: used.cast(),
        })
    }

    /// The slots that have ever been claimed.
    fn slots_in_use(&self) -> std::ops::Range<usize> {
        // SAFETY: the mapping lives as long as the process.
        0..unsafe { self.used.as_ref() }
            .load(Ordering::Acquire)
            .min(MAX_WORKERS)
    }

    fn slot(&self, index: usize) -> &WorkerSlot {
        assert!(index < MAX_WORKERS, "scoreboard slot out of range");
        // SAFETY: index is in range of the mapping, which is never unmapped.
        unsafe { &*self.base.as_ptr().add(index) }
    }

    /// A free slot index for a new worker, or None if the table is full.
    pub fn free_slot(&self) -> Option<usize> {
        (0..MAX_WORKERS).find(|&i| self.slot(i).pid.load(Ordering::Acquire) == 0)
    }

    /// Claim `index` for a worker about to be forked (called by the master before fork).
    pub fn claim(&self, index: usize, generation: u32) {
        // SAFETY: the mapping lives as long as the process.
        unsafe { self.used.as_ref() }.fetch_max(index + 1, Ordering::AcqRel);
        let s = self.slot(index);
        s.pid.store(-1, Ordering::Release);
        s.generation.store(generation, Ordering::Relaxed);
        s.requests.store(0, Ordering::Relaxed);
        let now = now_ns();
        s.booted_ns.store(now, Ordering::Relaxed);
        s.heartbeat_ns.store(now, Ordering::Relaxed);
        s.state
            .store(WorkerState::Booting as u32, Ordering::Release);
        for t in s.threads.iter() {
            t.started_ns.store(0, Ordering::Relaxed);
        }
        for p in s.loopback_ports.iter() {
            p.store(0, Ordering::Relaxed);
        }
        s.queued.store(0, Ordering::Relaxed);
        s.threads_now.store(0, Ordering::Relaxed);
        s.stop_reason.store(0, Ordering::Relaxed);
        for e in s.events.iter() {
            e.store(0, Ordering::Relaxed);
        }
        for c in s.stats.iter().flatten() {
            c.count.store(0, Ordering::Relaxed);
            c.sum_us.store(0, Ordering::Relaxed);
            for b in c.buckets.iter() {
                b.store(0, Ordering::Relaxed);
            }
        }
        for t in s.thread_beat.iter() {
            t.store(0, Ordering::Relaxed);
        }
        s.loop_lag_ns.store(0, Ordering::Relaxed);
        s.loop_overdue_ns.store(0, Ordering::Relaxed);
    }

    pub fn set_pid(&self, index: usize, pid: i32) {
        self.slot(index).pid.store(pid, Ordering::Release);
    }

    /// Give the slot back (the master, after reaping the worker).
    pub fn release(&self, index: usize) {
        let s = self.slot(index);
        s.state.store(WorkerState::Free as u32, Ordering::Release);
        s.pid.store(0, Ordering::Release);
    }

    /// The worker (if any) that has an open loopback call from client port `port`.
    pub fn loopback_owner(&self, port: u16) -> Option<WorkerHandle> {
        if port == 0 {
            return None;
        }
        self.slots_in_use()
            .filter(|&i| self.slot(i).pid.load(Ordering::Acquire) > 0)
            .find(|&i| {
                self.slot(i)
                    .loopback_ports
                    .iter()
                    .any(|p| p.load(Ordering::Acquire) == port as u32)
            })
            .map(|i| self.worker(i))
    }

    /// The live worker with process id `pid`, if any.
    pub fn worker_with_pid(&self, pid: i32) -> Option<WorkerHandle> {
        if pid <= 0 {
            return None;
        }
        self.slots_in_use()
            .find(|&i| self.slot(i).pid.load(Ordering::Acquire) == pid)
            .map(|i| self.worker(i))
    }

    /// Whether a request of any worker has been running for at least `ns`.
    pub fn any_request_older_than(&self, ns: u64) -> bool {
        let now = now_ns();
        self.slots_in_use()
            .filter(|&i| self.slot(i).pid.load(Ordering::Acquire) > 0)
            .any(|i| {
                self.worker(i)
                    .oldest_start_ns()
                    .is_some_and(|started| now.saturating_sub(started) >= ns)
            })
    }

    /// Whether requests wait in any worker's run queue.
    pub fn any_waiting(&self) -> bool {
        self.slots_in_use()
            .filter(|&i| self.slot(i).pid.load(Ordering::Acquire) > 0)
            .any(|i| self.slot(i).queued.load(Ordering::Acquire) > 0)
    }

    /// Whether any worker has a loopback call open.
    pub fn any_loopback_calls(&self) -> bool {
        self.slots_in_use()
            .filter(|&i| self.slot(i).pid.load(Ordering::Acquire) > 0)
            .any(|i| {
                self.slot(i)
                    .loopback_ports
                    .iter()
                    .any(|p| p.load(Ordering::Acquire) != 0)
            })
    }

    pub fn worker(&self, index: usize) -> WorkerHandle {
        WorkerHandle {
            board: *self,
            index,
        }
    }
}

/// A worker's view of its own slot (and the master's view of one worker).
#[derive(Clone, Copy)]
pub struct WorkerHandle {
    board: Scoreboard,
    index: usize,
}

impl WorkerHandle {
    fn slot(&self) -> &WorkerSlot {
        self.board.slot(self.index)
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn board(&self) -> Scoreboard {
        self.board
    }

    /// Requests waiting inside this worker for a thread.
    pub fn waiting(&self) -> u32 {
        self.slot().queued.load(Ordering::Relaxed)
    }

    pub fn set_queued(&self, n: u32) {
        if self.slot().queued.load(Ordering::Relaxed) != n {
            self.slot().queued.store(n, Ordering::Release);
        }
    }

    /// The app threads this worker runs requests on now, or `configured` before it said.
    pub fn threads(&self, configured: usize) -> usize {
        match self.slot().threads_now.load(Ordering::Acquire) {
            0 => configured,
            n => n as usize,
        }
    }

    pub fn set_threads(&self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if self.slot().threads_now.load(Ordering::Relaxed) != n {
            self.slot().threads_now.store(n, Ordering::Release);
        }
    }

    /// This worker's requests in flight for a log line: `GET / from 127.0.0.1:5555 (running for
    /// 1.2s), ...`, or `none`.
    pub fn requests_text(&self) -> String {
        let running: Vec<String> = self
            .requests_in_flight()
            .into_iter()
            .map(|(_, r)| format!("{} (running for {:.1}s)", r.summary(), r.age_secs()))
            .collect();
        if running.is_empty() {
            "none".to_string()
        } else {
            running.join(", ")
        }
    }

    /// Whether this worker has published an open loopback call (a connection of its own to the server).
    pub fn has_loopback_calls(&self) -> bool {
        self.slot()
            .loopback_ports
            .iter()
            .any(|p| p.load(Ordering::Acquire) != 0)
    }

    /// Replace this worker's list of open loopback calls.
    pub fn publish_loopback_ports(&self, ports: &[u16]) {
        let slots = &self.slot().loopback_ports;
        for (i, slot) in slots.iter().enumerate() {
            let v = ports.get(i).map_or(0, |p| *p as u32);
            if slot.load(Ordering::Relaxed) != v {
                slot.store(v, Ordering::Release);
            }
        }
    }

    pub fn set_pid(&self, pid: i32) {
        self.slot().pid.store(pid, Ordering::Release);
    }

    pub fn pid(&self) -> i32 {
        self.slot().pid.load(Ordering::Acquire)
    }

    pub fn state(&self) -> WorkerState {
        WorkerState::from_u32(self.slot().state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: WorkerState) {
        self.slot().state.store(state as u32, Ordering::Release);
    }

    pub fn heartbeat(&self) {
        self.slot().heartbeat_ns.store(now_ns(), Ordering::Release);
    }

    /// Publish the event loop's lag and how long it is overdue now (ASGI workers, every watchdog
    /// round).
    pub fn set_loop_lag(&self, lag: std::time::Duration, overdue: std::time::Duration) {
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let s = self.slot();
        s.loop_lag_ns.store(ns(lag), Ordering::Release);
        s.loop_overdue_ns.store(ns(overdue), Ordering::Release);
    }

    /// The event loop's lag and overdue time last published (zeros for a worker without a loop).
    pub fn loop_lag_ns(&self) -> (u64, u64) {
        let s = self.slot();
        (
            s.loop_lag_ns.load(Ordering::Acquire),
            s.loop_overdue_ns.load(Ordering::Acquire),
        )
    }

    pub fn last_heartbeat_ns(&self) -> u64 {
        self.slot().heartbeat_ns.load(Ordering::Acquire)
    }

    pub fn booted_ns(&self) -> u64 {
        self.slot().booted_ns.load(Ordering::Acquire)
    }

    pub fn requests(&self) -> u64 {
        self.slot().requests.load(Ordering::Relaxed)
    }

    /// Record that thread `thread` starts a request. Called by the Python thread, not the I/O loop, so the
    /// start time is when Python got the request.
    pub fn request_started(&self, thread: usize, method: &str, path: &str, client: &str) {
        let Some(t) = self.slot().threads.get(thread) else {
            return;
        };
        let seq = t.seq.load(Ordering::Relaxed);
        t.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        write_str(&t.method, method);
        write_str(&t.path, path);
        write_str(&t.client, client);
        t.wait.store(Wait::InApp as u32, Ordering::Relaxed);
        t.started_ns.store(now_ns(), Ordering::Relaxed);
        fence(Ordering::Release);
        t.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// What the task of entry `thread` waits for now (event loops only).
    pub fn set_wait(&self, thread: usize, wait: Wait) {
        if let Some(t) = self.slot().threads.get(thread) {
            t.wait.store(wait as u32, Ordering::Release);
        }
    }

    pub fn request_finished(&self, thread: usize) {
        let s = self.slot();
        s.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = s.threads.get(thread) {
            t.started_ns.store(0, Ordering::Release);
        }
    }

    /// A finished request, for the metrics: its method, status (0 when none is known) and duration.
    pub fn record_request(&self, method: &str, status: u16, duration_ns: u64) {
        let cell = &self.slot().stats[method_index(method)][status_index(status)];
        let secs = duration_ns as f64 / 1e9;
        if let Some(b) = DURATION_BUCKETS.iter().position(|le| secs <= *le) {
            cell.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        cell.sum_us.fetch_add(duration_ns / 1000, Ordering::Relaxed);
        // Last, so that a reader never sees more in the buckets than in the count.
        cell.count.fetch_add(1, Ordering::Release);
    }

    pub fn count(&self, event: Event) {
        self.slot().events[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// What the slot accumulated since the worker was spawned.
    pub fn request_stats(&self) -> RequestStats {
        let mut out = RequestStats::default();
        for (row, cells) in out.cells.iter_mut().zip(self.slot().stats.iter()) {
            for (o, c) in row.iter_mut().zip(cells.iter()) {
                let count = c.count.load(Ordering::Acquire);
                let mut buckets = [0u64; BUCKETS];
                for (b, x) in buckets.iter_mut().zip(c.buckets.iter()) {
                    *b = x.load(Ordering::Relaxed);
                }
                *o = (count, c.sum_us.load(Ordering::Relaxed), buckets);
            }
        }
        for (o, e) in out.events.iter_mut().zip(self.slot().events.iter()) {
            *o = e.load(Ordering::Relaxed);
        }
        out
    }

    pub fn set_stop_reason(&self, reason: StopReason) {
        // The first reason stays: a timeout during a max-requests retirement is still a retirement.
        let _ = self.slot().stop_reason.compare_exchange(
            0,
            reason as u32,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    pub fn stop_reason(&self) -> StopReason {
        match self.slot().stop_reason.load(Ordering::Acquire) {
            1 => StopReason::MaxRequests,
            2 => StopReason::Timeout,
            _ => StopReason::None,
        }
    }

    /// App thread `thread` shows it is alive (called by the thread itself, with the interpreter's lock
    /// held, so that a beat also proves the interpreter lets threads run).
    pub fn thread_alive(&self, thread: usize) {
        if let Some(t) = self.slot().thread_beat.get(thread) {
            t.store(now_ns(), Ordering::Release);
        }
    }

    /// App thread `thread` ended (a retired added thread): its entry reports nothing any more.
    pub fn thread_alive_clear(&self, thread: usize) {
        if let Some(t) = self.slot().thread_beat.get(thread) {
            t.store(0, Ordering::Release);
        }
    }

    /// When each of the first `n` app threads last showed it was alive (0 = never reported).
    pub fn thread_beats(&self, n: usize) -> Vec<u64> {
        self.slot()
            .thread_beat
            .iter()
            .take(n)
            .map(|t| t.load(Ordering::Acquire))
            .collect()
    }

    /// When the request of thread `thread` started (0 when it runs none).
    pub fn thread_request_started_ns(&self, thread: usize) -> u64 {
        self.slot()
            .threads
            .get(thread)
            .map_or(0, |t| t.started_ns.load(Ordering::Acquire))
    }

    /// When the oldest request in flight started (monotonic ns), without reading the requests themselves.
    pub fn oldest_start_ns(&self) -> Option<u64> {
        self.slot()
            .threads
            .iter()
            .map(|t| t.started_ns.load(Ordering::Acquire))
            .filter(|&ns| ns != 0)
            .min()
    }

    pub fn oldest_request(&self) -> Option<(usize, RequestInFlight)> {
        self.requests_in_flight()
            .into_iter()
            .min_by_key(|(_, r)| r.started_ns)
    }

    /// Every thread's request in flight, read consistently (retrying while a writer is mid-update).
    pub fn requests_in_flight(&self) -> Vec<(usize, RequestInFlight)> {
        let mut out = Vec::new();
        for (i, t) in self.slot().threads.iter().enumerate() {
            if t.started_ns.load(Ordering::Acquire) == 0 {
                continue;
            }
            for _ in 0..8 {
                let before = t.seq.load(Ordering::Acquire);
                if before % 2 == 1 {
                    std::hint::spin_loop();
                    continue;
                }
                let snap = RequestInFlight {
                    started_ns: t.started_ns.load(Ordering::Relaxed),
                    method: read_str(&t.method),
                    path: read_str(&t.path),
                    client: read_str(&t.client),
                    wait: Wait::from_u32(t.wait.load(Ordering::Relaxed)),
                };
                fence(Ordering::Acquire);
                if t.seq.load(Ordering::Relaxed) == before {
                    if snap.started_ns != 0 {
                        out.push((i, snap));
                    }
                    break;
                }
            }
        }
        out
    }
}

fn write_str(dst: &[AtomicU8Array], s: &str) {
    let bytes = s.as_bytes();
    // Keep the last byte as a terminator so a full field still reads back as a bounded string.
    let n = bytes.len().min(dst.len() - 1);
    for (d, b) in dst.iter().zip(bytes[..n].iter()) {
        d.store(*b, Ordering::Relaxed);
    }
    dst[n].store(0, Ordering::Relaxed);
}

fn read_str(src: &[AtomicU8Array]) -> String {
    let mut v = Vec::with_capacity(src.len());
    for b in src {
        let b = b.load(Ordering::Relaxed);
        if b == 0 {
            break;
        }
        v.push(b);
    }
    String::from_utf8_lossy(&v).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_across_fork() {
        let board = Scoreboard::create().expect("mmap");
        let idx = board.free_slot().expect("slot");
        board.claim(idx, 1);
        // SAFETY: the child only touches the shared mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let w = board.worker(idx);
            w.request_started(3, "GET", "/slow", "127.0.0.1:5555");
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let w = board.worker(idx);
        let (thread, req) = w.oldest_request().expect("request in flight");
        assert_eq!(thread, 3);
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/slow");
        assert_eq!(req.client, "127.0.0.1:5555");
        w.request_finished(3);
        assert!(w.oldest_request().is_none());
        assert_eq!(w.requests(), 1);
    }

    #[test]
    fn request_stats_across_fork_and_reuse() {
        let board = Scoreboard::create().expect("mmap");
        board.claim(1, 1);
        // SAFETY: the child only touches the shared mapping and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let w = board.worker(1);
            w.record_request("GET", 200, 3_000_000); // 3 ms: first bucket
            w.record_request("GET", 204, 200_000_000); // 0.2 s
            w.record_request("BREW", 0, 500_000_000_000); // 500 s: above every bound
            w.count(Event::Timeout);
            w.set_stop_reason(StopReason::Timeout);
            w.set_stop_reason(StopReason::MaxRequests);
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let w = board.worker(1);
        let s = w.request_stats();
        let get_2xx = s.cells[0][1];
        assert_eq!(get_2xx.0, 2);
        assert_eq!(get_2xx.1, 203_000);
        assert_eq!(get_2xx.2[0], 1);
        assert_eq!(get_2xx.2[5], 1); // 0.25
        assert_eq!(s.cells[7][5].0, 1);
        assert_eq!(s.total(), 3);
        let (buckets, over) = s.histogram();
        assert_eq!(buckets.iter().sum::<u64>(), 2);
        assert_eq!(over, 1);
        assert_eq!(s.events[Event::Timeout as usize], 1);
        assert_eq!(w.stop_reason(), StopReason::Timeout);
        let mut total = RequestStats::default();
        total.add(&s);
        total.add(&s);
        assert_eq!(total.total(), 6);
        board.claim(1, 2);
        assert_eq!(w.request_stats(), RequestStats::default());
        assert_eq!(w.stop_reason(), StopReason::None);
        assert_eq!(method_index("OPTIONS"), 6);
        assert_eq!(status_index(599), 4);
        assert_eq!(status_index(600), 5);
    }

    #[test]
    fn long_strings_are_truncated() {
        let board = Scoreboard::create().expect("mmap");
        let w = board.worker(0);
        let long = "x".repeat(1000);
        w.request_started(0, "GET", &long, "c");
        let (_, req) = w.oldest_request().expect("in flight");
        assert_eq!(req.path.len(), PATH_LEN - 1);
    }
}
