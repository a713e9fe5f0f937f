//! Static files served by the I/O thread itself (`--static-map PREFIX=DIR`): a request whose path falls
//! under a mount never becomes a job, so no Python thread (and no unit of capacity) is spent on it — the
//! field report's "static files served by Django" cause of busy workers. The HTTP/1 driver asks
//! [`mount_for`] after a head is parsed and, on a match, calls [`serve`] instead of placing the request;
//! an HTTP/2 stream (`h2::stream`) does the same and frames [`answer`]'s result as HEADERS and DATA.
//!
//! What it answers: GET and HEAD (others 405 with `Allow`); a regular file below the mount's root, after
//! `http::static_files::decode_path` refused `..`, NUL and backslashes and the resolved path (symlinks
//! followed) was found under the canonical root — anything else is 404, a directory too (no listing, no
//! index file), and a miss does not fall through to the app. Validators (`ETag` from mtime and size,
//! `Last-Modified`) with `If-None-Match`/`If-Modified-Since` (304), `If-Match`/`If-Unmodified-Since`
//! (412) and `If-Range`; one byte range (206, or 416); a precompressed `.br` or `.gz` sibling when
//! `Accept-Encoding` takes it (not for range requests: those get the file itself); `Cache-Control`
//! forever for content-hashed names (`ManifestStaticFilesStorage`), a minute otherwise. The access-log
//! line and the request metrics are those of any request; static requests do not count toward
//! `--max-requests`, which is about the app's memory.
//!
//! The file is resolved, opened and stat'ed on the I/O thread, synchronously: for a root on a local file
//! system whose directory entries are cached that is a few system calls of about a microsecond each
//! (canonicalize: one `lstat` per path component; then `open` and `fstat`), less than handing the work to
//! a blocking thread and back would cost. A root on a network file system would stall the I/O thread
//! while the server waits for it; keep static roots on local disk. Small files are read into the
//! response's head buffer and go out in one write; larger ones with the transport's `send_file`
//! (sendfile(2) on a plain socket).

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use super::transport::Transport;
use super::IoState;
use crate::config::StaticMount;
use crate::exchange::Peer;
use crate::http::framing::{H1Response, HeadFacts};
use crate::http::static_files::{
    accepted_codings, byte_range, content_type, decode_path, etag_matches, format_date,
    is_hashed_name, parse_date, Coding, RangeAnswer,
};
use crate::http::{BodyKind, RequestHead};

/// `Cache-Control` of a file whose name carries its content's hash: it never changes under that name.
const CACHE_HASHED: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of other files: short, so a changed file reaches clients soon (whitenoise's default).
const CACHE_OTHER: &str = "public, max-age=60";
/// Files up to this size go out in the head's write (one system call); larger ones with `send_file`.
const INLINE_FILE: u64 = 32 * 1024;

/// The mount a request path falls under, and the rest of the path after its prefix (still encoded).
/// Mounts are longest prefix first (see `config::settings`); `/static` alone is the mount's root.
pub(super) fn mount_for<'a>(
    mounts: &'a [StaticMount],
    path: &'a str,
) -> Option<(&'a StaticMount, &'a str)> {
    mounts.iter().find_map(|m| {
        if let Some(rest) = path.strip_prefix(m.prefix.as_str()) {
            Some((m, rest))
        } else if path == &m.prefix[..m.prefix.len() - 1] {
            Some((m, ""))
        } else {
            None
        }
    })
}

/// The body of an answer.
pub(super) enum Body {
    /// A short text of the server's own (404, 405, 400), or nothing.
    Text(&'static str),
    /// `count` bytes of `file` from `offset`.
    File { file: File, offset: u64, count: u64 },
}

/// An answer before it is framed (as HTTP/1 by `serve`, as HTTP/2 by `h2::stream`).
pub(super) struct Answer {
    pub status: u16,
    pub fields: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Answer {
    fn text(status: u16, text: &'static str) -> Answer {
        Answer {
            status,
            fields: vec![("Content-Type", "text/plain; charset=utf-8".to_string())],
            body: Body::Text(text),
        }
    }

    fn empty(status: u16, fields: Vec<(&'static str, String)>) -> Answer {
        Answer {
            status,
            fields,
            body: Body::Text(""),
        }
    }

    pub fn len(&self) -> u64 {
        match &self.body {
            Body::Text(t) => t.len() as u64,
            Body::File { count, .. } => *count,
        }
    }
}

/// A regular file at `rel` below `root` (canonical), opened: the path is resolved with its symlinks and
/// must still be under the root. None for anything else (missing, a directory, outside, unreadable).
fn open_below(root: &Path, rel: &[u8]) -> Option<(File, std::fs::Metadata)> {
    let resolved = std::fs::canonicalize(root.join(OsStr::from_bytes(rel))).ok()?;
    if !resolved.starts_with(root) {
        return None;
    }
    let file = File::open(&resolved).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((file, meta))
}

/// Decide the answer to a static request (no I/O on the connection; the file is opened here).
pub(super) fn answer(io: &IoState, head: &RequestHead, mount: &StaticMount, rest: &str) -> Answer {
    let get = head.method == "GET";
    if !get && head.method != "HEAD" {
        let mut a = Answer::text(405, "Method Not Allowed\n");
        a.fields.push(("Allow", "GET, HEAD".to_string()));
        return a;
    }
    let rel = match decode_path(rest.as_bytes()) {
        Ok(rel) => rel,
        Err(e) => {
            if io.ctx.log.enabled(crate::log::Level::Debug) {
                io.ctx.log.debug(&format!(
                    "Static request {} refused: its path has {e}",
                    head.target
                ));
            }
            return match e.status() {
                400 => Answer::text(400, "Bad Request\n"),
                _ => Answer::text(404, "Not Found\n"),
            };
        }
    };
    if rel.is_empty() {
        return Answer::text(404, "Not Found\n");
    }
    let Some(identity) = open_below(&mount.root, &rel) else {
        return Answer::text(404, "Not Found\n");
    };
    let (ctype, compressible) = content_type(&rel);
    let range = head.header("range").filter(|_| get);
    // A precompressed sibling, best coding first; a range is served from the file itself.
    let mut chosen = (identity, None);
    if range.is_none() {
        for coding in accepted_codings(head.header("accept-encoding")) {
            let mut sibling = rel.clone();
            sibling.extend_from_slice(coding.suffix().as_bytes());
            if let Some(found) = open_below(&mount.root, &sibling) {
                chosen = (found, Some(coding));
                break;
            }
        }
    }
    let ((file, meta), coding) = chosen;
    let len = meta.len();
    let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
    let etag = format!(
        "\"{mtime:x}-{len:x}{}\"",
        match coding {
            Some(Coding::Brotli) => "-br",
            Some(Coding::Gzip) => "-gz",
            None => "",
        }
    );
    let last_modified = format_date(mtime);
    let mut validators = vec![
        ("Last-Modified", last_modified.clone()),
        ("ETag", etag.clone()),
        (
            "Cache-Control",
            if is_hashed_name(&rel) {
                CACHE_HASHED
            } else {
                CACHE_OTHER
            }
            .to_string(),
        ),
    ];
    if compressible || coding.is_some() {
        validators.push(("Vary", "Accept-Encoding".to_string()));
    }
    // RFC 9110 §13.2.2: preconditions in order.
    let failed = match head.header("if-match") {
        Some(tags) => !etag_matches(tags, &etag, false),
        None => head
            .header("if-unmodified-since")
            .and_then(parse_date)
            .is_some_and(|since| mtime > since),
    };
    if failed {
        return Answer::empty(412, Vec::new());
    }
    let not_modified = match head.header("if-none-match") {
        Some(tags) => etag_matches(tags, &etag, true),
        None => head
            .header("if-modified-since")
            .and_then(parse_date)
            .is_some_and(|since| mtime <= since),
    };
    if not_modified {
        return Answer::empty(304, validators);
    }
    let mut fields = vec![("Content-Type", ctype.to_string())];
    if let Some(coding) = coding {
        fields.push(("Content-Encoding", coding.name().to_string()));
    }
    fields.append(&mut validators);
    fields.push(("Accept-Ranges", "bytes".to_string()));
    // If-Range: the range only while the file is the one the client has part of (a strong tag, or
    // exactly its date).
    let range = range.filter(|_| match head.header("if-range") {
        None => true,
        Some(v) if v.starts_with(b"\"") || v.starts_with(b"W/") => etag_matches(v, &etag, false),
        Some(v) => parse_date(v) == Some(mtime),
    });
    let (status, offset, count) = match range.map(|r| byte_range(r, len)) {
        None | Some(RangeAnswer::Full) => (200, 0, len),
        Some(RangeAnswer::Part { first, last }) => {
            fields.push(("Content-Range", format!("bytes {first}-{last}/{len}")));
            (206, first, last - first + 1)
        }
        Some(RangeAnswer::Unsatisfiable) => {
            return Answer::empty(416, vec![("Content-Range", format!("bytes */{len}"))]);
        }
    };
    Answer {
        status,
        fields,
        body: Body::File {
            file,
            offset,
            count,
        },
    }
}

/// Answer a request under `mount` on the connection; true when the connection may carry another one.
pub(super) async fn serve<S: Transport>(
    stream: &mut S,
    io: &IoState,
    head: &RequestHead,
    mount: &StaticMount,
    rest: &str,
    peer: &Peer,
) -> bool {
    let t0 = Instant::now();
    let started_at = SystemTime::now();
    let a = answer(io, head, mount, rest);
    // A request body is not read: the connection ends after the answer (closed in stages by the driver).
    let keep_alive =
        head.keep_alive && io.ctx.cfg.keepalive > 0 && matches!(head.body, BodyKind::Empty);
    let stopping = io.ctx.shutting_down.load(Ordering::Acquire);
    let mut h1 = H1Response::new(head.version_minor, &head.method, keep_alive);
    let total = a.len();
    let mut buf = Vec::with_capacity(512);
    h1.write_head(
        &mut buf,
        &HeadFacts {
            status: a.status,
            reason: None,
            content_length: None,
            total: Some(total),
            close: stopping,
        },
        a.fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
    );
    let sent = timeout(io.header_timeout, async {
        match &a.body {
            Body::Text(t) => {
                let n = h1.body(t.len(), &mut buf, &mut Vec::new());
                buf.extend_from_slice(&t.as_bytes()[..n]);
                stream.write_all(&buf).await
            }
            Body::File {
                file,
                offset,
                count,
            } => {
                let count = h1.file(*count).unwrap_or(0);
                if count <= INLINE_FILE {
                    let start = buf.len();
                    buf.resize(start + count as usize, 0);
                    file.read_exact_at(&mut buf[start..], *offset)?;
                    stream.write_all(&buf).await
                } else {
                    stream.write_all(&buf).await?;
                    stream.send_file(file, *offset, count).await
                }
            }
        }
    })
    .await;
    let ok = matches!(sent, Ok(Ok(())));
    record(
        io,
        head,
        peer,
        &a,
        ok.then_some(total),
        started_at,
        t0.elapsed(),
    );
    ok && h1.keep_alive()
}

/// The access-log line and the request metrics of a static answer, as for any request.
pub(super) fn record(
    io: &IoState,
    head: &RequestHead,
    peer: &Peer,
    a: &Answer,
    sent: Option<u64>,
    started_at: SystemTime,
    elapsed: Duration,
) {
    io.board
        .record_request(&head.method, a.status, elapsed.as_nanos() as u64);
    if let Some(statsd) = crate::metrics::statsd::get() {
        statsd.request(elapsed, a.status);
    }
    let Some(access) = &io.ctx.access_log else {
        return;
    };
    let mut headers: Vec<(String, String)> = a
        .fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    headers.push(("Content-Length".to_string(), a.len().to_string()));
    let body_sent = if head.method == "HEAD" || a.status == 304 {
        Some(0)
    } else {
        sent
    };
    access.log(&crate::log::AccessRecord::of_request(
        head, &peer.ip, a.status, body_sent, &headers, started_at, elapsed,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<StaticMount> {
        // Longest prefix first, as the setting sorts them.
        vec![
            StaticMount {
                prefix: "/static/admin/".into(),
                root: "/a".into(),
            },
            StaticMount {
                prefix: "/static/".into(),
                root: "/s".into(),
            },
        ]
    }

    #[test]
    fn the_longest_prefix_wins_and_the_bare_prefix_is_the_root() {
        let m = mounts();
        let found = |p| mount_for(&m, p).map(|(m, rest)| (m.root.clone(), rest.to_string()));
        assert_eq!(
            found("/static/admin/x.css"),
            Some(("/a".into(), "x.css".into()))
        );
        assert_eq!(found("/static/x.css"), Some(("/s".into(), "x.css".into())));
        assert_eq!(found("/static"), Some(("/s".into(), String::new())));
        assert_eq!(found("/static/admin"), Some(("/a".into(), String::new())));
        assert_eq!(found("/staticx/a"), None);
        assert_eq!(found("/"), None);
    }

    #[test]
    fn only_regular_files_under_the_root_open() {
        let base = std::env::temp_dir().join(format!("fcn-static-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::write(root.join("a.txt"), b"a").unwrap();
        std::fs::write(base.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(base.join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("in")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        assert!(open_below(&root, b"a.txt").is_some());
        assert!(open_below(&root, b"in").is_some());
        assert!(open_below(&root, b"out").is_none());
        assert!(open_below(&root, b"dir").is_none());
        assert!(open_below(&root, b"missing").is_none());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
