//! The worker's Python threads: each takes requests from the shared queue and runs them through the app.
//!
//! A thread stays attached to the interpreter for its whole life and only detaches (releases the GIL)
//! while it waits, so each request costs one GIL hand-over rather than a thread-state setup.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use pyo3::prelude::*;

use super::exchange::Job;
use super::WorkerContext;
use crate::wsgi::WsgiRunner;

pub fn python_thread(ctx: Arc<WorkerContext>, index: usize, rx: crossbeam_channel::Receiver<Job>) {
    let log = ctx.log.clone();
    Python::attach(|py| {
        if let Some(slot) = ctx.tstates.get(index) {
            // SAFETY: called with the thread attached; the state lives as long as the thread.
            let tstate = unsafe { pyo3::ffi::PyThreadState_Get() };
            slot.store(
                tstate as *mut libc::c_void,
                std::sync::atomic::Ordering::Release,
            );
        }
        let mut runner = match WsgiRunner::new(py, ctx, index) {
            Ok(r) => r,
            Err(e) => {
                log.error(&format!(
                    "Cannot prepare the WSGI environ:\n{}",
                    crate::python::format_exception(py, &e)
                ));
                return;
            }
        };
        loop {
            let job = py.detach(|| rx.recv());
            let Ok(job) = job else { break };
            // A bug on our side must cost one request (its connection closes when the reply channel
            // drops), not the thread.
            if catch_unwind(AssertUnwindSafe(|| runner.handle(py, job))).is_err() {
                log.error("Internal error while handling a request; the connection was closed");
            }
        }
    });
}
