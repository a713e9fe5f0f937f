//! Websocket frames from a client, as the asgi worker's sessions read them (`worker/ws.rs`): any bytes
//! after the handshake, read in server role with a small message limit, must end in messages or an
//! error — never a panic, a hang, or more memory than the limit allows.

#![no_main]

use std::io::{self, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

/// The client's bytes in, the server's answers (pongs, closes) swallowed.
struct Peer {
    input: Cursor<Vec<u8>>,
}

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into what came with the handshake and what followed it.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (split as usize).min(rest.len());
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let mut ws = WebSocket::from_partially_read(
        Peer {
            input: Cursor::new(rest[at..].to_vec()),
        },
        rest[..at].to_vec(),
        Role::Server,
        Some(config),
    );
    // Every read consumes input or ends; bound the loop anyway.
    for _ in 0..10_000 {
        match ws.read() {
            Ok(msg) => assert!(msg.len() <= 64 * 1024),
            Err(_) => break,
        }
    }
});
