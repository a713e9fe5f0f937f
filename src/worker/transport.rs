//! The transport a connection runs on: a byte stream (`Transport`) that plain TCP and unix sockets
//! implement, and TLS over either (`worker::tls::TlsConn`). The connection code is generic over it and
//! never touches a file descriptor itself; what only some transports can do is a capability it asks for:
//!
//! - `send_file`: every transport can send part of a file. On a plain socket the kernel copies it
//!   (sendfile(2)); the default, for a transport whose bytes are not the socket's (TLS), reads the file
//!   and writes it through the stream. `sendfile_capable` says which one a transport does, so the
//!   response side can tell before it chooses how to send a file.
//! - `raw_fd`: the socket underneath, for socket options (`TCP_NOTSENT_LOWAT` while a file is sent), when
//!   there is one.
//! - `tls`: what the TLS handshake told (protocol, cipher, client certificate), on a TLS transport.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

use crate::tls::TlsInfo;

/// How much of a file the default `send_file` reads at a time.
const FILE_BLOCK: usize = 64 * 1024;

/// A byte stream the worker serves a connection on.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Whether `send_file` hands the file to the kernel (sendfile(2)) rather than reading it in Rust.
    fn sendfile_capable(&self) -> bool {
        false
    }

    /// The socket under the stream, for socket options; None when the transport has no socket of its own.
    /// Bytes written to it directly bypass the stream unless `sendfile_capable` says they are the same.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    /// Whether the client closed its end (or the connection broke) while a request runs, without
    /// consuming anything: on a plain socket a read would find the end of the stream (bytes of a next
    /// request waiting there are kept and mean it is not gone).
    fn client_gone(&self) -> bool {
        self.raw_fd().is_some_and(stream_ended)
    }

    /// The PROXY header's outcome when it was read below the stream (a TLS connection reads it from the
    /// TCP bytes before its handshake, see `tls`): the ends it named, if any; the driver then looks for
    /// no header in the stream. None: the driver reads the header itself (`--proxy-protocol`).
    fn proxy_read(&self) -> Option<Option<super::proxy::Proxied>> {
        None
    }

    /// The TLS connection's facts; None on a plain transport.
    fn tls(&self) -> Option<&Arc<TlsInfo>> {
        None
    }

    /// Send `count` bytes of `file` from `offset`, after whatever was written before. The default reads
    /// the file in blocks (pread, on the I/O thread, as sendfile(2) reads it there too) and writes them
    /// through the stream, so it works on any transport; a file shorter than announced is an error.
    fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        count: u64,
    ) -> impl Future<Output = io::Result<()>> {
        async move {
            if count == 0 {
                return Ok(());
            }
            let mut block = vec![0u8; (count.min(FILE_BLOCK as u64)) as usize];
            let end = offset + count;
            let mut off = offset;
            while off < end {
                let want = ((end - off) as usize).min(block.len());
                let n = file.read_at(&mut block[..want], off)?;
                if n == 0 {
                    return Err(short_file());
                }
                self.write_all(&block[..n]).await?;
                off += n as u64;
            }
            self.flush().await
        }
    }
}

/// Plain sockets (TCP, unix): files go out with sendfile(2).
impl<S: Socket + AsyncRead> Transport for S {
    fn sendfile_capable(&self) -> bool {
        true
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
    async fn send_file(&mut self, file: &File, offset: u64, count: u64) -> io::Result<()> {
        kernel_send_file(self, file, offset, count).await
    }
}

/// A socket whose readiness tokio tracks: what sendfile(2) on its fd needs.
trait Socket: AsyncWrite + Unpin + AsRawFd {
    fn writable(&self) -> impl Future<Output = io::Result<()>>;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

impl Socket for TcpStream {
    async fn writable(&self) -> io::Result<()> {
        TcpStream::writable(self).await
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        TcpStream::try_io(self, interest, f)
    }
}

impl Socket for UnixStream {
    async fn writable(&self) -> io::Result<()> {
        UnixStream::writable(self).await
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        UnixStream::try_io(self, interest, f)
    }
}

fn short_file() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than announced")
}

/// Unsent bytes a TCP socket may hold while a file is sent (`TCP_NOTSENT_LOWAT`).
const FILE_UNSENT_LIMIT: libc::c_int = 64 * 1024;

/// Keep at most `FILE_UNSENT_LIMIT` of a file queued unsent in the socket. Without a limit one sendfile
/// call queues megabytes, and the kernel transmits them as the client's ACKs come back — on loopback, on
/// the client's CPU (the bench's file row: wrk at 100% of a core, the worker at a quarter). With the
/// limit, each call's data leaves at once from the worker's own thread and the client only receives:
/// 2.5k → 5.2k req/s for the 1 MiB file (bench/README.md). On a unix socket the option does not exist and
/// the call fails harmlessly.
fn limit_unsent(fd: RawFd) {
    let limit = FILE_UNSENT_LIMIT;
    // SAFETY: `fd` is an open socket for the duration of the call; the option value is a c_int we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&limit as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Send `count` bytes of `file` from `offset` with sendfile(2), waiting for the socket to drain as needed.
async fn kernel_send_file<S: Socket>(
    stream: &mut S,
    file: &File,
    offset: u64,
    count: u64,
) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    stream.flush().await?;
    let out_fd: RawFd = stream.as_raw_fd();
    limit_unsent(out_fd);
    let in_fd = file.as_raw_fd();
    let mut off = offset as libc::off_t;
    let end = offset + count;
    while (off as u64) < end {
        stream.writable().await?;
        let want = ((end - off as u64) as usize).min(1 << 30);
        let res = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: both fds are open for the duration of the call; `off` is ours.
            let n = unsafe { libc::sendfile(out_fd, in_fd, &mut off, want) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match res {
            Ok(0) => return Err(short_file()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A one-byte peek finds the end of the stream (or an error other than "nothing yet").
fn stream_ended(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local buffer on a socket the connection owns; nothing is consumed.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return true;
    }
    n < 0 && {
        let e = io::Error::last_os_error().raw_os_error();
        !matches!(e, Some(libc::EAGAIN) | Some(libc::EINTR))
    }
}

/// The peer shut its sending side (its FIN arrived) or the connection broke, whatever bytes are still
/// unread before that end: for a stream whose last bytes are framing of its own (a TLS close_notify) that
/// a peek cannot tell from data.
pub fn peer_shut_down(fd: RawFd) -> bool {
    crate::sock::poll_now(fd, libc::POLLRDHUP) & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR)
        != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// A transport with no socket of its own (as a TLS stream): it gets every default.
    impl Transport for DuplexStream {}

    fn run<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    /// A file of `len` bytes that are not all alike, so a piece read from the wrong offset shows.
    fn patterned_file(name: &str, len: usize) -> (File, Vec<u8>) {
        let path =
            std::env::temp_dir().join(format!("fcn-transport-{name}-{}", std::process::id()));
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut f = File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        (f, data)
    }

    /// Write a head, then a file range through `send_file`, with the reader as slow as a small pipe makes it;
    /// return what the reader got.
    async fn send_through<T: Transport + 'static>(
        mut tx: T,
        mut rx: impl AsyncRead + Unpin,
        file: File,
        offset: u64,
        count: u64,
    ) -> (io::Result<()>, Vec<u8>) {
        let writer = tokio::task::spawn_local(async move {
            tx.write_all(b"HEAD").await?;
            let r = tx.send_file(&file, offset, count).await;
            drop(tx);
            r
        });
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.unwrap();
        (writer.await.unwrap(), got)
    }

    #[test]
    fn default_send_file_reads_the_range_through_the_stream() {
        let (file, data) = patterned_file("default", 300 * 1024 + 17);
        let (a, b) = tokio::io::duplex(8 * 1024);
        assert!(!a.sendfile_capable());
        assert_eq!(a.raw_fd(), None);
        // More than one block, from an offset inside the first.
        let (offset, count) = (1000u64, 200 * 1024 + 5);
        let (r, got) = run(send_through(a, b, file, offset, count));
        r.unwrap();
        assert_eq!(&got[..4], b"HEAD");
        assert_eq!(&got[4..], &data[offset as usize..(offset + count) as usize]);
    }

    #[test]
    fn default_send_file_of_nothing_writes_nothing() {
        let (file, _) = patterned_file("empty", 10);
        let (a, b) = tokio::io::duplex(1024);
        let (r, got) = run(send_through(a, b, file, 5, 0));
        r.unwrap();
        assert_eq!(got, b"HEAD");
    }

    #[test]
    fn default_send_file_of_a_short_file_fails_after_what_it_has() {
        let (file, data) = patterned_file("short", 100 * 1024);
        let (a, b) = tokio::io::duplex(8 * 1024);
        let (r, got) = run(send_through(a, b, file, 10, 200 * 1024));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(&got[4..], &data[10..]);
    }

    #[test]
    fn unix_socket_send_file_uses_the_kernel_and_sends_the_same_bytes() {
        let (file, data) = patterned_file("unix", 300 * 1024 + 17);
        let (r, got) = run(async move {
            let (a, b) = UnixStream::pair().unwrap();
            assert!(a.sendfile_capable());
            assert_eq!(a.raw_fd(), Some(a.as_raw_fd()));
            send_through(a, b, file, 1000, 250 * 1024).await
        });
        r.unwrap();
        assert_eq!(&got[..4], b"HEAD");
        assert_eq!(&got[4..], &data[1000..1000 + 250 * 1024]);
    }

    #[test]
    fn unix_socket_send_file_of_a_short_file_fails() {
        let (file, _) = patterned_file("unix-short", 1024);
        let (r, got) = run(async move {
            let (a, b) = UnixStream::pair().unwrap();
            send_through(a, b, file, 0, 4096).await
        });
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(got.len(), 4 + 1024);
    }
}
