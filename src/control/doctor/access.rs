//! The access log as `ferricornctl doctor` reads it: which requests in the window were for static or
//! media files, i.e. answered by the app when the proxy should have served them.
//!
//! Any `access_log_format` is accepted: a line's request is the first quoted `METHOD TARGET HTTP/x`
//! (gunicorn's `"%(r)s"`), its status the number after it, its time the first `[dd/Mon/yyyy:...]`.
//! A format without `%(t)s` has no times; then every line read counts, and the report says so.

use super::logs::parse_access_time;

/// Extensions of files a web server normally sends itself.
const STATIC_EXTENSIONS: &[&str] = &[
    "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif", "woff",
    "woff2", "ttf", "otf", "eot", "mp4", "webm", "mp3", "pdf", "zip", "txt",
];
/// URL prefixes of Django's conventional `STATIC_URL` and `MEDIA_URL`.
const STATIC_PREFIXES: &[&str] = &["/static/", "/media/"];

/// Whether a path looks like a static or media file.
pub fn is_static_path(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    if STATIC_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return true;
    }
    let last = path.rsplit('/').next().unwrap_or("");
    match last.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => {
            STATIC_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
        }
        _ => false,
    }
}

/// One access-log line's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub time: Option<i64>,
    pub method: String,
    pub target: String,
    pub status: Option<u16>,
}

pub fn parse_line(line: &str) -> Option<Access> {
    let time = line.find('[').and_then(|i| {
        let rest = &line[i + 1..];
        parse_access_time(&rest[..rest.find(']')?])
    });
    let mut rest = line;
    while let Some(open) = rest.find('"') {
        let after = &rest[open + 1..];
        let close = after.find('"')?;
        let quoted = &after[..close];
        let mut w = quoted.split(' ');
        if let (Some(m), Some(t), Some(v), None) = (w.next(), w.next(), w.next(), w.next()) {
            if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) && v.starts_with("HTTP/")
            {
                let status = after[close + 1..]
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse().ok());
                return Some(Access {
                    time,
                    method: m.to_string(),
                    target: t.to_string(),
                    status,
                });
            }
        }
        rest = &after[close + 1..];
    }
    None
}

/// Static-file requests the app answered in the window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessSummary {
    pub requests: usize,
    pub static_requests: usize,
    /// A few of the static paths seen, for the evidence.
    pub examples: Vec<String>,
    /// Lines without a time (the format has no `%(t)s`): counted whatever their age.
    pub untimed: bool,
}

pub fn summarize(text: &str, since: i64) -> AccessSummary {
    let mut s = AccessSummary::default();
    for a in text.lines().filter_map(parse_line) {
        match a.time {
            Some(t) if t < since => continue,
            Some(_) => {}
            None => s.untimed = true,
        }
        s.requests += 1;
        if is_static_path(&a.target) {
            s.static_requests += 1;
            let path = a.target.split('?').next().unwrap_or("").to_string();
            if s.examples.len() < 3 && !s.examples.contains(&path) {
                s.examples.push(path);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_in_gunicorn_and_custom_formats() {
        let a = parse_line(r#"127.0.0.1 - - [23/Nov/2026:11:19:42 +0000] "POST /hello_world HTTP/1.1" 201 54 "-" "curl/7.88.1""#).unwrap();
        assert_eq!(a.method, "POST");
        assert_eq!(a.target, "/hello_world");
        assert_eq!(a.status, Some(201));
        assert_eq!(a.time, Some(1_795_432_782));
        let a = parse_line(r#"127.0.0.1 "GET /static/app.css HTTP/1.1" 200 3 0.000757s"#).unwrap();
        assert_eq!(a.time, None);
        assert_eq!(a.status, Some(200));
        // a quoted referer before the request does not confuse it
        let a = parse_line(r#""https://x/" "GET /a HTTP/1.0" 404"#).unwrap();
        assert_eq!((a.target.as_str(), a.status), ("/a", Some(404)));
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line(r#"x "unterminated"#), None);
    }

    #[test]
    fn static_paths() {
        assert!(is_static_path("/static/admin/css/base.css"));
        assert!(is_static_path("/media/uploads/a"));
        assert!(is_static_path("/favicon.ico"));
        assert!(is_static_path("/assets/app.JS?v=3"));
        assert!(!is_static_path("/slow-query/?seconds=3"));
        assert!(!is_static_path("/api/v1.2/items"));
        assert!(!is_static_path("/.css"));
        let text = "127.0.0.1 - - [23/Nov/2026:11:19:42 +0000] \"GET /static/a.css HTTP/1.1\" 200 5 \"-\" \"x\"\n\
                    127.0.0.1 - - [23/Nov/2026:11:19:43 +0000] \"GET / HTTP/1.1\" 200 5 \"-\" \"x\"\n\
                    127.0.0.1 - - [23/Nov/2026:09:00:00 +0000] \"GET /static/old.css HTTP/1.1\" 200 5 \"-\" \"x\"\n";
        let s = summarize(text, 1_795_432_000);
        assert_eq!(s.requests, 2);
        assert_eq!(s.static_requests, 1);
        assert_eq!(s.examples, vec!["/static/a.css"]);
        assert!(!s.untimed);
    }
}
