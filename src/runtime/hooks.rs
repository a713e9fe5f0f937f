//! The per-request server hooks, `pre_request(worker, req)` and `post_request(worker, req, environ,
//! resp)`, called as gunicorn calls them, the same for every runtime.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::WorkerContext;
use crate::http::RequestHead;

/// `pre_request(worker, req)`, when the config file defines it (or `post_request`, which needs the
/// same `req`). Returns the `req` object for [`post_request`].
pub fn pre_request<'py>(
    py: Python<'py>,
    ctx: &WorkerContext,
    head: &RequestHead,
) -> Option<Bound<'py, PyAny>> {
    let hooks = &ctx.hooks;
    // gunicorn's default `pre_request` logs `METHOD PATH` at debug level; a hook of the config file
    // replaces it, as there. The level is asked first: at info this costs one atomic load.
    if ctx.log.enabled(crate::log::Level::Debug) && !hooks.has("pre_request") {
        ctx.log.debug(&format!("{} {}", head.method, head.path));
    }
    let worker = ctx.hook_worker.as_ref()?;
    if !hooks.has("pre_request") && !hooks.has("post_request") {
        return None;
    }
    let req = hooks.request(py, head).ok()?;
    let worker = worker.bind(py);
    let _ = worker.setattr("nr", ctx.board.requests());
    if let Ok(args) = PyTuple::new(py, [worker.clone(), req.clone()]) {
        let _ = hooks.call(py, "pre_request", args);
    }
    Some(req)
}

/// What `post_request`'s `resp` says of the response.
pub struct Sent<'a> {
    pub status: u16,
    pub headers: &'a [(String, String)],
    pub body_sent: u64,
}

/// `post_request(worker, req[, environ[, resp]])`, with as many arguments as the hook declares.
pub fn post_request(
    py: Python<'_>,
    ctx: &WorkerContext,
    req: Bound<'_, PyAny>,
    env: Option<&Bound<'_, PyDict>>,
    sent: &Sent<'_>,
) {
    let (Some(worker), hooks) = (ctx.hook_worker.as_ref(), &ctx.hooks) else {
        return;
    };
    if !hooks.has("post_request") {
        return;
    }
    let resp = match hooks.response(py, sent.status, sent.headers, sent.body_sent) {
        Ok(resp) => resp,
        Err(_) => return,
    };
    let env = match env {
        Some(e) => e.clone().into_any(),
        None => PyDict::new(py).into_any(),
    };
    let all = [worker.bind(py).clone(), req, env, resp];
    let n = hooks.post_request_arity().clamp(2, 4);
    if let Ok(args) = PyTuple::new(py, all.into_iter().take(n)) {
        let _ = hooks.call(py, "post_request", args);
    }
}
