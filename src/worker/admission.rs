//! Admission: which connections a worker accepts, and where each request it reads runs — on one of its
//! threads, queued for them, or on the overflow lane. This module keeps the worker's one promise about
//! loopback calls (a view calling its own server over HTTP), stated here so a reader can check it.
//!
//! # Capacity
//! A worker has `limit` Python threads — a number that changes while it runs when its threads are elastic
//! (`elastic`: added while requests wait on busy threads that wait on I/O, retired when unneeded); every
//! decision below reads the number at the moment it is made, so the invariant holds for any count. A unit of capacity is held by each request that runs on them or is
//! queued for them, and for a short grace by a connection just accepted within capacity (its first request
//! is usually on its way; over TLS from accept, through its handshake, while the client keeps up). The worker accepts a new connection while a unit is free — so a request never
//! queues in a busy worker while another is idle — and, beyond that, in two cases only: for fairness (its
//! requests are fast and connections wait in the backlog, see `FAST_REQUEST`) and while some worker of the
//! server has a loopback call open (the call may be in the backlog: it can only be recognised once
//! accepted). A connection accepted beyond capacity holds nothing until its request is placed.
//!
//! # The invariant
//! **A request that is a loopback call of this server never waits behind the busy threads for longer than
//! it takes to recognise it (about a quarter of a second, always under one second): it runs on the
//! overflow lane.** It holds whatever the admission path was, because every request is placed in one
//! function, `Admission::place`, and every request that waits, waits in one place:
//! - a request that does not fit in the threads (as many requests running or queued as there are threads)
//!   and is already known as a loopback call goes to the overflow lane; every other request goes to the
//!   run queue as a `Ticket`. No other path exists: a fresh connection, one accepted for fairness or to
//!   look for a loopback call, and the tenth request of a kept-alive connection all go through `place`.
//! - until a thread has taken its ticket, the connection looks at it every `WAIT_POLL`
//!   (`h1::request`); once the client is known as a loopback call it takes the job back out of
//!   the ticket (whoever takes it first runs it, so it never runs twice) and runs it on the overflow lane.
//! - a TCP client is known as a loopback call when a worker of this server published its client port: every
//!   worker with a request older than `LOOPBACK_SUSPECT_AGE` scans its own connections to the server's
//!   ports (`loopback::own_calls_to`) every `loopback::SCAN_INTERVAL` while anything waits anywhere in the
//!   server (a queued ticket in any worker, or a listen backlog), and publishes them in the scoreboard. A
//!   unix-socket client is known by its process: its pid (`SO_PEERCRED`) is one of this server's workers.
//! - a loopback call still in the listen backlog reaches `place` because a full worker accepts while any
//!   call is published.
//!
//! The bound: 100 ms suspect age + 50 ms scan + 100 ms poll ≈ 0.25 s. Not covered: more than
//! `MAX_OVERFLOW_THREADS` loopback calls nested inside each other at once in one worker, and more than
//! `scoreboard::MAX_LOOPBACK_PORTS` open connections of one worker to its own server.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::loopback::{self, ListenPort};
use crate::exchange::{Job, Peer, Ticket};
use crate::log::Level;
use crate::runtime::WorkerContext;
use crate::scoreboard::{now_ns, WorkerHandle, WorkerState};

/// Extra Python threads a worker may start, on demand, to serve loopback calls while its ordinary threads
/// are all busy.
pub const MAX_OVERFLOW_THREADS: usize = 4;
/// A request must have run this long before the worker looks for loopback calls: a fast load never pays
/// for the scan.
const LOOPBACK_SUSPECT_AGE: Duration = Duration::from_millis(100);
/// How often a connection whose request is queued looks whether the request turned out to be a loopback
/// call.
pub const WAIT_POLL: Duration = Duration::from_millis(100);
/// At most one loopback warning per worker in this period (the others are counted).
const LOOPBACK_WARNING_PERIOD: Duration = Duration::from_secs(10);
/// A worker whose requests finish faster than this on average, and none of whose running requests is
/// older, will run a new connection soon even when all its threads are busy. Such a worker keeps accepting
/// while connections wait in the backlog: otherwise its own kept-alive connections would win every freed
/// thread and the backlog would never be served.
const FAST_REQUEST: Duration = Duration::from_millis(20);

/// Where `Admission::place` put a request.
pub enum Placed {
    /// In the run queue of the worker's threads. The connection keeps the ticket and watches it until a
    /// thread has taken it (see the invariant).
    Threads(Arc<Ticket>),
    /// On the overflow lane: a loopback call, outside ordinary capacity.
    Overflow,
}

/// The overflow lane: its own queue and lazily started threads, so a loopback call never waits behind
/// the busy ordinary threads.
pub struct OverflowLane {
    tx: crossbeam_channel::Sender<Arc<Ticket>>,
    rx: crossbeam_channel::Receiver<Arc<Ticket>>,
    spawned: Cell<usize>,
    in_flight: Cell<usize>,
    first_index: usize,
}

impl OverflowLane {
    /// A lane whose threads will be numbered from `first_index` (after the ordinary ones).
    pub fn new(first_index: usize) -> OverflowLane {
        let (tx, rx) = crossbeam_channel::unbounded();
        OverflowLane {
            tx,
            rx,
            spawned: Cell::new(0),
            in_flight: Cell::new(0),
            first_index,
        }
    }
}

/// The worker's listening sockets, by kind: their backlogs are looked at, not accepted from, here.
pub struct ListenFds {
    pub tcp: Vec<RawFd>,
    pub unix: Vec<RawFd>,
}

/// A connection's unit of capacity, if it holds one; given back on drop.
pub struct Claim<'a> {
    admission: &'a Admission,
    pub held: bool,
}

impl Claim<'_> {
    /// Hand the unit (if still held) to whoever takes the returned flag, as the accept loop hands a
    /// connection its claim (`claim(true)` takes it up again).
    pub fn keep(mut self) -> bool {
        std::mem::replace(&mut self.held, false)
    }

    pub fn release(&mut self) {
        if self.held {
            self.held = false;
            self.admission.release();
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// The worker's capacity and admission state, owned by its I/O thread (single-threaded: plain cells).
pub struct Admission {
    /// Units of capacity held: requests running or queued on the threads, plus fresh connections' claims.
    in_use: Cell<usize>,
    /// The most units in use at once since `take_peak` last looked (elastic threads' retirement).
    peak: Cell<usize>,
    limit: Cell<usize>,
    connections: Cell<usize>,
    max_connections: usize,
    /// Capacity, fairness or the loopback state changed: the accept loops and waiters look again.
    pub changed: Notify,
    queue: crossbeam_channel::Sender<Arc<Ticket>>,
    overflow: OverflowLane,
    /// Accepting beyond capacity for fairness (see `FAST_REQUEST`), refreshed by `watch`.
    fair_accept: Cell<bool>,
    /// A loopback call may wait in a backlog: some worker published one, or a unix-socket listener has
    /// connections waiting while a request has run long. A full worker still accepts, to find and serve it.
    looking: Cell<bool>,
    /// Moving average of request durations (dispatch to last byte), ns; 0 = none yet.
    avg_request_ns: Cell<u64>,
    listen_ports: Vec<ListenPort>,
    listen_fds: ListenFds,
    last_loopback_warning: Cell<Option<tokio::time::Instant>>,
    loopback_warnings_suppressed: Cell<u64>,
    /// When `watch` last published a loopback call of this worker it had not published before: until
    /// its connection has looked again (`WAIT_POLL`), the call may still be counted as waiting.
    loopback_news: Cell<Option<Instant>>,
    board: WorkerHandle,
    ctx: Arc<WorkerContext>,
    /// Elastic threads: present when the worker may run more threads than it started with.
    elastic: Option<super::elastic::Elastic>,
}

impl Admission {
    pub fn new(
        ctx: Arc<WorkerContext>,
        limit: usize,
        queue: crossbeam_channel::Sender<Arc<Ticket>>,
        overflow: OverflowLane,
        listen_ports: Vec<ListenPort>,
        listen_fds: ListenFds,
        elastic: Option<super::elastic::Elastic>,
    ) -> Admission {
        Admission {
            in_use: Cell::new(0),
            peak: Cell::new(0),
            limit: Cell::new(limit),
            connections: Cell::new(0),
            max_connections: ctx.cfg.worker_connections.max(1),
            changed: Notify::new(),
            queue,
            overflow,
            fair_accept: Cell::new(false),
            looking: Cell::new(false),
            avg_request_ns: Cell::new(0),
            listen_ports,
            listen_fds,
            last_loopback_warning: Cell::new(None),
            loopback_warnings_suppressed: Cell::new(0),
            loopback_news: Cell::new(None),
            board: ctx.board,
            ctx,
            elastic,
        }
    }

    pub fn has_free_thread(&self) -> bool {
        self.in_use.get() < self.limit.get()
    }

    /// Units of capacity held now (requests running or queued, fresh connections' claims).
    pub fn in_use(&self) -> usize {
        self.in_use.get()
    }

    /// The most units held at once since the last call; the count starts again from those held now.
    pub fn take_peak(&self) -> usize {
        self.peak.replace(self.in_use.get())
    }

    /// The threads changed (elastic threads): capacity follows at once.
    pub fn set_limit(&self, n: usize) {
        self.limit.set(n);
        self.board.set_threads(n);
        self.changed.notify_waiters();
    }

    /// Open connections of this worker.
    pub fn connections(&self) -> usize {
        self.connections.get()
    }

    /// Whether the accept loops may take one more connection now (see "Capacity" above).
    pub fn can_accept(&self) -> bool {
        self.connections.get() < self.max_connections
            && (self.has_free_thread() || self.fair_accept.get() || self.looking.get())
    }

    /// A connection was just accepted: it claims a unit of capacity if one is free (true). Called in the
    /// accept loop itself, before it looks at capacity again.
    pub fn accepted(&self, peer: &Peer) -> bool {
        self.accepted_holding(peer, false)
    }

    /// A unit of capacity for a TLS connection whose handshake is about to run, if one is free (true):
    /// taken in the accept loop, as `accepted` takes one for a plain connection, so that a TLS
    /// listener's connections spread over the workers as plain ones do. The handshake gives it back
    /// early when the client is slow (`tls::serve`).
    pub fn reserve(&self) -> bool {
        let held = self.has_free_thread();
        if held {
            self.acquire();
        }
        held
    }

    /// `accepted` for a connection that may already hold a unit (`held`, from `reserve`): it now counts
    /// as open, and claims a unit if it holds none and one is free.
    pub fn accepted_holding(&self, peer: &Peer, held: bool) -> bool {
        self.connections.set(self.connections.get() + 1);
        if held {
            return true;
        }
        let held = self.has_free_thread();
        if held {
            self.acquire();
        } else if self.ctx.log.enabled(Level::Debug) {
            let why = if self.looking.get() {
                "to look for a loopback call".to_string()
            } else {
                format!(
                    "for fairness (requests here take {:.1} ms on average)",
                    self.avg_request_ns.get() as f64 / 1e6
                )
            };
            self.ctx.log.debug(&format!(
                "Accepted {} while all {} threads are busy, {why}",
                peer.label(),
                self.limit.get()
            ));
        }
        held
    }

    /// The claim of a connection, as `accepted` said.
    pub fn claim(&self, held: bool) -> Claim<'_> {
        Claim {
            admission: self,
            held,
        }
    }

    pub fn connection_closed(&self) {
        self.connections
            .set(self.connections.get().saturating_sub(1));
        self.changed.notify_waiters();
    }

    /// Busy/idle for the scoreboard; a stopping worker stays `Stopping`, which is how the master knows
    /// to start its replacement while it finishes (a request on a kept-alive connection must not hide it).
    fn show_state(&self, state: WorkerState) {
        if !self.ctx.shutting_down.load(Ordering::Relaxed) {
            self.board.set_state(state);
        }
    }

    fn acquire(&self) {
        self.in_use.set(self.in_use.get() + 1);
        self.peak.set(self.peak.get().max(self.in_use.get()));
        self.show_state(WorkerState::Busy);
        self.changed.notify_waiters();
    }

    fn release(&self) {
        let n = self.in_use.get().saturating_sub(1);
        self.in_use.set(n);
        if n == 0 {
            self.show_state(WorkerState::Idle);
        }
        self.changed.notify_waiters();
    }

    /// Place a request (the only place where that is decided; see the invariant). `peer` is its
    /// connection's own peer (not a client named by a PROXY header); `claim` is the connection's unit of
    /// capacity: kept (or taken) for a request on the threads, given back for one on the overflow lane.
    /// None when the worker's queues are gone (it is exiting).
    pub fn place(&self, job: Job, peer: &Peer, claim: &mut Claim<'_>) -> Option<Placed> {
        // Fits: counting this request, no more are running or queued than there are threads, so it
        // starts without waiting for another request to finish.
        let fits = if claim.held {
            self.in_use.get() <= self.limit.get()
        } else {
            self.in_use.get() < self.limit.get()
        };
        if !fits && self.is_loopback_call(peer) {
            claim.release();
            return self.run_on_overflow(job, peer).then_some(Placed::Overflow);
        }
        if !claim.held {
            self.acquire();
            claim.held = true;
        }
        if !fits && self.ctx.log.enabled(Level::Debug) {
            self.ctx.log.debug(&format!(
                "{} {} from {} waits for a thread ({} queued)",
                job.head.method,
                job.head.target,
                peer.label(),
                self.waiting() + 1
            ));
        }
        let ticket = Ticket::new(job);
        let sent = self.queue.send(ticket.clone()).is_ok();
        self.ctx.wake();
        sent.then_some(Placed::Threads(ticket))
    }

    /// A queued request's connection looks again (every `WAIT_POLL`): if its client is now known as a
    /// loopback call and no thread has taken the job yet, take it back and run it on the overflow lane.
    /// True when it moved.
    pub fn recheck(&self, ticket: &Ticket, peer: &Peer, claim: &mut Claim<'_>) -> bool {
        if !self.is_loopback_call(peer) {
            return false;
        }
        let Some(job) = self.withdraw(ticket) else {
            return false;
        };
        claim.release();
        self.ctx.log.debug(&format!(
            "Queued {} {} from {} is a loopback call: moved to the overflow lane",
            job.head.method,
            job.head.target,
            peer.label()
        ));
        self.run_on_overflow(job, peer)
    }

    /// Take a queued request back from the run queue, unless a thread has taken it: then no thread will
    /// ever run it (its connection runs it elsewhere, or answers it itself).
    pub fn withdraw(&self, ticket: &Ticket) -> Option<Job> {
        let job = ticket.take()?;
        // The ticket stays in the run queue, empty, until a thread passes it by.
        self.ctx.empty_tickets.fetch_add(1, Ordering::Relaxed);
        Some(job)
    }

    /// How many threads run requests now (the overflow lane's aside).
    pub fn limit(&self) -> usize {
        self.limit.get()
    }

    /// Whether a loopback call of this worker was first published less than `within` ago: its queued
    /// request may not have moved to the overflow lane yet.
    pub fn loopback_call_found_within(&self, within: Duration) -> bool {
        self.loopback_news
            .get()
            .is_some_and(|t| t.elapsed() < within)
    }

    /// Requests queued for this worker's threads and not taken yet.
    pub fn waiting(&self) -> usize {
        self.queue
            .len()
            .saturating_sub(self.ctx.empty_tickets.load(Ordering::Relaxed))
    }

    /// Whether `peer` is the client end of a loopback call (see the invariant for how it is known).
    pub fn is_loopback_call(&self, peer: &Peer) -> bool {
        self.loopback_owner(peer).is_some()
    }

    /// The worker whose request opened the connection from `peer`, if it is a loopback call.
    fn loopback_owner(&self, peer: &Peer) -> Option<WorkerHandle> {
        let board = self.board.board();
        match peer.local_pid {
            Some(pid) => board.worker_with_pid(pid),
            None if peer.same_host => board.loopback_owner(peer.port),
            None => None,
        }
    }

    /// Run a loopback call on the overflow lane, starting one more overflow thread if all are busy; warn.
    fn run_on_overflow(&self, job: Job, peer: &Peer) -> bool {
        self.warn_loopback(&job, peer);
        self.ctx.board.count(crate::scoreboard::Event::LoopbackCall);
        let lane = &self.overflow;
        if lane.in_flight.get() >= lane.spawned.get() && lane.spawned.get() < MAX_OVERFLOW_THREADS {
            let index = lane.first_index + lane.spawned.get();
            let started =
                self.ctx
                    .runtime
                    .spawn_thread(self.ctx.clone(), index, lane.rx.clone(), "loopback");
            match started {
                Ok(_) => lane.spawned.set(lane.spawned.get() + 1),
                Err(e) => self
                    .ctx
                    .log
                    .error(&format!("Cannot start a thread for a loopback call: {e}")),
            }
        }
        lane.in_flight.set(lane.in_flight.get() + 1);
        let sent = lane.tx.send(Ticket::new(job)).is_ok();
        self.ctx.wake();
        sent
    }

    /// A request that ran on the overflow lane is done.
    pub fn overflow_done(&self) {
        let lane = &self.overflow;
        lane.in_flight.set(lane.in_flight.get().saturating_sub(1));
    }

    /// One WARNING per loopback call (at most one per period; the rest are counted in the next one),
    /// naming the nested request, the request that made it, and what to change.
    fn warn_loopback(&self, job: &Job, peer: &Peer) {
        let now = tokio::time::Instant::now();
        if self
            .last_loopback_warning
            .get()
            .is_some_and(|t| now.duration_since(t) < LOOPBACK_WARNING_PERIOD)
        {
            self.loopback_warnings_suppressed
                .set(self.loopback_warnings_suppressed.get() + 1);
            return;
        }
        self.last_loopback_warning.set(Some(now));
        let outer = self
            .loopback_owner(peer)
            .and_then(|w| {
                let pid = w.pid();
                w.oldest_request().map(|(_, r)| {
                    format!(
                        "{} {} (worker {pid}, running for {:.1}s)",
                        r.method,
                        r.path,
                        r.age_secs()
                    )
                })
            })
            .unwrap_or_else(|| "a request of this server".to_string());
        let suppressed = self.loopback_warnings_suppressed.replace(0);
        let more = if suppressed > 0 {
            format!(" ({suppressed} more since the last warning)")
        } else {
            String::new()
        };
        let (held, fix) = self.ctx.runtime.loopback_words();
        self.ctx.log.warning(&format!(
            "Loopback call: {} {} from {} was sent to this server by its own request {outer} {held}; it is served on extra capacity so it cannot deadlock{more}. {fix}",
            job.head.method,
            job.head.target,
            peer.label(),
        ));
    }

    /// A request of this worker took `d` from dispatch to its last byte: update the moving average.
    pub fn record_duration(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let avg = self.avg_request_ns.get();
        self.avg_request_ns.set(if avg == 0 {
            ns.max(1)
        } else {
            (avg * 7 + ns) / 8
        });
    }

    /// Connections waiting for this worker's threads: requests in its run queue and connections in the
    /// listen backlogs (shared with the other workers; a unix listener with connections counts one).
    pub fn waiting_connections(&self) -> usize {
        let tcp: usize = self
            .listen_fds
            .tcp
            .iter()
            .map(|fd| crate::sock::accept_queue_len(*fd) as usize)
            .sum();
        let unix = self
            .listen_fds
            .unix
            .iter()
            .filter(|fd| crate::sock::has_pending(**fd))
            .count();
        self.waiting() + tcp + unix
    }

    /// Connections wait in a TCP listener's backlog.
    fn backlog(&self) -> bool {
        self.listen_fds
            .tcp
            .iter()
            .any(|fd| crate::sock::accept_queue_len(*fd) > 0)
    }

    /// See `FAST_REQUEST`.
    fn should_accept_for_fairness(&self) -> bool {
        let fast = FAST_REQUEST.as_nanos() as u64;
        let avg = self.avg_request_ns.get();
        !self.has_free_thread()
            && avg > 0
            && avg < fast
            && self
                .board
                .oldest_start_ns()
                .is_none_or(|started| now_ns().saturating_sub(started) < fast)
            && self.backlog()
    }

    /// Whether this worker's own loopback calls are worth looking for: a request has run a while and
    /// something waits for a worker.
    fn loopback_suspect(&self) -> bool {
        let board = self.board;
        !self.listen_ports.is_empty()
            && board.oldest_start_ns().is_some_and(|started| {
                now_ns().saturating_sub(started) >= LOOPBACK_SUSPECT_AGE.as_nanos() as u64
            })
            && (board.board().any_waiting() || self.backlog())
    }

    /// One round of `watch`: publish this worker's waiting count and its loopback calls (`calls`, just
    /// looked up; `published`, those published last round), then let elastic threads look (after the
    /// calls are known, so a call found in this round is not taken for a request that needs a thread),
    /// and follow the fairness and loopback states that decide accepting beyond capacity.
    fn watch_once(&self, published: &mut Vec<u16>, calls: Vec<u16>) {
        let board = self.board;
        board.set_queued(self.waiting() as u32);
        board.set_threads(self.limit.get());
        if !calls.is_empty() || !published.is_empty() {
            if calls.is_empty() {
                self.ctx
                    .log
                    .debug("No loopback call open in this worker any more");
            } else {
                self.ctx.log.debug(&format!(
                    "Loopback calls open in this worker, from client ports {calls:?}"
                ));
            }
            if calls.iter().any(|port| !published.contains(port)) {
                self.loopback_news.set(Some(Instant::now()));
            }
            board.publish_loopback_ports(&calls);
            *published = calls;
        }
        if let Some(elastic) = &self.elastic {
            elastic.tick(self);
        }
        let fair = self.should_accept_for_fairness();
        // A unix-socket client is known only once accepted (by its pid): look while a request of this
        // server has run long and such a listener has connections waiting.
        let looking = !self.has_free_thread()
            && (board.board().any_loopback_calls()
                || (!self.listen_fds.unix.is_empty()
                    && board
                        .board()
                        .any_request_older_than(LOOPBACK_SUSPECT_AGE.as_nanos() as u64)
                    && self
                        .listen_fds
                        .unix
                        .iter()
                        .any(|fd| crate::sock::has_pending(*fd))));
        if fair != self.fair_accept.get() || looking != self.looking.get() {
            self.fair_accept.set(fair);
            self.looking.set(looking);
            self.changed.notify_waiters();
        }
    }
}

/// The publishing half of the invariant, for the worker's whole life: a stopping worker still finishes
/// requests that may be waiting for their own loopback calls.
pub async fn watch(admission: &Admission) {
    let mut published = Vec::new();
    loop {
        // The lookup asks the kernel about every socket of the host (tens of milliseconds with tens of
        // thousands of them): on a blocking thread, so the I/O loop goes on meanwhile.
        let calls = if admission.loopback_suspect() {
            let ports = admission.listen_ports.clone();
            tokio::task::spawn_blocking(move || loopback::own_calls_to(&ports))
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        admission.watch_once(&mut published, calls);
        tokio::time::sleep(loopback::SCAN_INTERVAL).await;
    }
}
