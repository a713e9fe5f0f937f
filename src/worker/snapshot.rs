//! The worker's side of [`crate::snapshot`]: on the supervision tick, when the master has asked, write
//! the Python stack of every thread running a request and the worker's recently finished requests.
//!
//! Stacks are read without the GIL by CPython's own dumper (as for `--timeout`), into a memfd so that a
//! deep stack cannot fill a pipe that this same thread would have to drain. An event loop's requests
//! are tasks, not threads: their await stacks are asked of the loop, and published when it answers.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::Ordering;

use crate::runtime::{WorkerContext, LOOP_STACK};
use crate::scoreboard::WorkerHandle;
use crate::snapshot::{History, SnapshotWriter, Snapshots, AREA_LEN};

/// Room left for the stacks once the history is written; each stack gets an equal share.
const STACK_RESERVE: usize = 512;

/// Answer the master's request for a snapshot, if there is one.
pub fn answer_if_asked(ctx: &WorkerContext) {
    let Some(snaps) = Snapshots::get() else {
        return;
    };
    let slot = ctx.board.index();
    let Some(request) = snaps.pending(slot) else {
        return;
    };
    // An event loop's tasks: their await stacks come from the loop, a moment later.
    if let Some(stacks) = ctx.runtime.task_stacks(ctx) {
        let board = ctx.board;
        tokio::task::spawn_local(async move {
            let stacks = stacks.await;
            publish_tasks(snaps, slot, request, board, &stacks);
        });
        return;
    }
    let mut scratch = memfd();
    publish(
        snaps,
        slot,
        request,
        ctx.board,
        "(stack not available)\n",
        |thread| {
            let tstate = ctx
                .tstates
                .get(thread)
                .map(|t| t.load(Ordering::Acquire))
                .unwrap_or(std::ptr::null_mut());
            match (&mut scratch, tstate.is_null()) {
                (Some(file), false) => read_stack(file, tstate),
                _ => None,
            }
        },
    );
}

/// The snapshot of an event-loop worker: each request in flight with its task's await stack, or the
/// blocked loop thread's stack for a task the loop could not answer for.
fn publish_tasks(
    snaps: Snapshots,
    slot: usize,
    request: u64,
    board: WorkerHandle,
    stacks: &[(usize, String)],
) {
    let find = |entry: usize| stacks.iter().find(|(e, _)| *e == entry).map(|(_, s)| s);
    let loop_stack = find(LOOP_STACK);
    publish(
        snaps,
        slot,
        request,
        board,
        "(stack not available: the request started after the loop answered)\n",
        |entry| find(entry).or(loop_stack).cloned(),
    );
}

/// Write and publish the snapshot: the recent requests, then each request in flight with the stack
/// `stack_of` gives for its entry (`missing` where it gives none), the room left shared equally.
fn publish(
    snaps: Snapshots,
    slot: usize,
    request: u64,
    board: WorkerHandle,
    missing: &str,
    mut stack_of: impl FnMut(usize) -> Option<String>,
) {
    let mut w = SnapshotWriter::default();
    for f in History::get().entries() {
        w.finished(&f);
    }
    let busy = board.requests_in_flight();
    if !busy.is_empty() {
        let room = AREA_LEN.saturating_sub(w.len() + STACK_RESERVE);
        let budget = room / busy.len();
        for (entry, req) in &busy {
            let text = stack_of(*entry);
            w.stack(
                *entry,
                req.started_ns,
                text.as_deref().unwrap_or(missing),
                budget,
            );
        }
    }
    snaps.publish(slot, request, &w.into_text());
}

fn memfd() -> Option<File> {
    // SAFETY: a static NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"ferricorn-stack".as_ptr(), libc::MFD_CLOEXEC) };
    // SAFETY: a descriptor we just created and now own.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

/// The stack of one thread, dumped into `file` (emptied first) and read back.
fn read_stack(file: &mut File, tstate: *mut libc::c_void) -> Option<String> {
    file.set_len(0).ok()?;
    file.seek(SeekFrom::Start(0)).ok()?;
    crate::python::stacks::dump_thread(file.as_raw_fd(), tstate);
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text)
}
