//! `wsload`: a websocket echo load client for the benchmark harness (bench/harness.py).
//!
//! wrk cannot speak websockets, and a Python client would be the bottleneck on a 2-core machine, so
//! the websocket rows are driven by this: it opens N connections to a `ws://127.0.0.1:PORT/PATH`
//! URL (loopback only), and once all are open each one, for D seconds, sends a text message and
//! waits for its echo before sending the next (one message in flight per connection, like wrk's one
//! request in flight per connection). It prints one line `WSLOAD_JSON {...}` with the messages
//! echoed, messages/s, the p50/p99/max round trip and the errors.
//!
//! ```text
//! wsload --url ws://127.0.0.1:8000/ --connections 16 --duration 5 [--size 13] [--threads 1]
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Command-line options.
struct Options {
    url: String,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    size: usize,
    threads: usize,
    connect_timeout: Duration,
}

const USAGE: &str =
    "usage: wsload --url ws://127.0.0.1:PORT/PATH --connections N --duration SECONDS \
                     [--size BYTES] [--threads N] [--connect-timeout SECONDS]";

fn parse_args() -> Result<Options, String> {
    let mut url = None;
    let mut connections = 16usize;
    let mut duration = 5.0f64;
    let mut size = 13usize;
    let mut threads = 1usize;
    let mut connect_timeout = 10.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--connections" | "-c" => connections = number(&flag, &value()?)?,
            "--duration" | "-d" => duration = number(&flag, &value()?)?,
            "--size" => size = number(&flag, &value()?)?,
            "--threads" | "-t" => threads = number(&flag, &value()?)?,
            "--connect-timeout" => connect_timeout = number(&flag, &value()?)?,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    let url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
    let addr = loopback_addr(&url)?;
    if connections == 0 || threads == 0 || size == 0 {
        return Err("--connections, --threads and --size must be at least 1".to_string());
    }
    let positive = |v: f64| v > 0.0 && v.is_finite();
    if !positive(duration) || !positive(connect_timeout) {
        return Err("--duration and --connect-timeout must be positive seconds".to_string());
    }
    Ok(Options {
        url,
        addr,
        connections,
        duration: Duration::from_secs_f64(duration),
        size,
        threads,
        connect_timeout: Duration::from_secs_f64(connect_timeout),
    })
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag}: not a number: {text}"))
}

/// The socket address of a `ws://` URL, which must name a loopback address with a port.
fn loopback_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let addr: SocketAddr = authority.parse().map_err(|_| {
        format!("{url}: the host must be an IP address with a port (127.0.0.1:PORT or [::1]:PORT)")
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!("{url}: only loopback addresses are allowed"));
    }
    Ok(addr)
}

/// What one connection did.
#[derive(Default)]
struct ConnResult {
    /// Round trips (send → echo received) in microseconds, of messages echoed before the deadline.
    latencies_us: Vec<u32>,
    connected: bool,
    connect_error: Option<String>,
    /// A read/write failure, a close by the server or an echo that differs from the message.
    error: Option<String>,
}

async fn connection(
    opts: Arc<Options>,
    connected: Arc<Barrier>,
    go: Arc<Barrier>,
    deadline: Arc<OnceLock<Instant>>,
) -> ConnResult {
    let mut out = ConnResult::default();
    let connect = async {
        let tcp = TcpStream::connect(opts.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        // tungstenite zero-fills its whole read buffer (128 KiB by default) before every read, which
        // for 13-byte messages made the client spend a third of its time in memset; 4 KiB is plenty.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _resp) =
            tokio_tungstenite::client_async_with_config(opts.url.as_str(), tcp, Some(config))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        Ok::<_, String>(ws)
    };
    let ws = match tokio::time::timeout(opts.connect_timeout, connect).await {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            out.connect_error = Some(e);
            None
        }
        Err(_) => {
            out.connect_error = Some("connect: timed out".to_string());
            None
        }
    };
    // Every connection (open or failed) meets the others here, so the timed phase starts with all of
    // them open; the main task sets the deadline between the two barriers.
    connected.wait().await;
    go.wait().await;
    let Some(mut ws) = ws else { return out };
    out.connected = true;
    let Some(&deadline) = deadline.get() else {
        return out;
    };
    let payload: String = "x".repeat(opts.size);
    out.latencies_us.reserve(1 << 14);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let sent = Instant::now();
        if let Err(e) = ws.send(Message::text(payload.as_str())).await {
            out.error = Some(format!("send: {e}"));
            break;
        }
        let echo = match tokio::time::timeout_at(
            deadline.max(sent + Duration::from_secs(5)).into(),
            next_data(&mut ws),
        )
        .await
        {
            Err(_) => {
                out.error = Some("no echo within 5 s".to_string());
                break;
            }
            Ok(None) => {
                out.error = Some("server closed the connection".to_string());
                break;
            }
            Ok(Some(Err(e))) => {
                out.error = Some(format!("receive: {e}"));
                break;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        let elapsed = sent.elapsed();
        match echo {
            Message::Text(text) if text.as_str() == payload => {}
            Message::Close(frame) => {
                out.error = Some(format!("server closed the session: {frame:?}"));
                break;
            }
            other => {
                out.error = Some(format!(
                    "echo differs from the message ({} bytes)",
                    other.len()
                ));
                break;
            }
        }
        // An echo that arrives after the deadline is not counted (its connection stops here).
        if Instant::now() <= deadline {
            out.latencies_us
                .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
        }
    }
    // A clean close, bounded: the server's answer is not waited for long.
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    out
}

/// The next message that is not a ping or pong (tungstenite answers pings itself, but still hands
/// them to the reader): a server's keep-alive ping is not an echo, and not an error either.
async fn next_data<S>(ws: &mut S) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return other,
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(opts: Options) -> String {
    let opts = Arc::new(opts);
    let n = opts.connections;
    let connected = Arc::new(Barrier::new(n + 1));
    let go = Arc::new(Barrier::new(n + 1));
    let deadline = Arc::new(OnceLock::new());
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(connection(
                opts.clone(),
                connected.clone(),
                go.clone(),
                deadline.clone(),
            ))
        })
        .collect();
    connected.wait().await;
    let start = Instant::now();
    let _ = deadline.set(start + opts.duration);
    go.wait().await;
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.unwrap_or_else(|e| ConnResult {
            error: Some(format!("connection task failed: {e}")),
            ..ConnResult::default()
        }));
    }
    summarise(&opts, results, opts.duration)
}

fn summarise(opts: &Options, results: Vec<ConnResult>, elapsed: Duration) -> String {
    let mut all: Vec<u32> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let messages = all.len();
    let secs = elapsed.as_secs_f64();
    let connected = results.iter().filter(|r| r.connected).count();
    let connect_errors = results.iter().filter(|r| r.connect_error.is_some()).count();
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    let first_error = results
        .iter()
        .find_map(|r| r.connect_error.clone().or_else(|| r.error.clone()))
        .unwrap_or_default();
    format!(
        "WSLOAD_JSON {{\"connections\": {}, \"connected\": {}, \"duration_us\": {}, \"messages\": {}, \
         \"msgs_per_s\": {:.1}, \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \"max_us\": {}, \
         \"connect_errors\": {}, \"errors\": {}, \"first_error\": {}}}",
        opts.connections,
        connected,
        elapsed.as_micros(),
        messages,
        if secs > 0.0 { messages as f64 / secs } else { 0.0 },
        percentile(&all, 50.0),
        percentile(&all, 90.0),
        percentile(&all, 99.0),
        all.last().copied().unwrap_or(0),
        connect_errors,
        errors,
        json_string(&first_error),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("wsload: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if opts.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wsload: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", runtime.block_on(run(opts)));
    ExitCode::SUCCESS
}
