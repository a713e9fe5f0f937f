//! The websocket layer of an accepted session, as a crate of its own so that it links no Python and
//! the fuzz targets (`fuzz/`) can drive it directly: [`frames`] reads a client's frames into messages
//! and writes the server's, [`deflate`] negotiates and runs permessage-deflate. The handshake and the
//! session's bridge to the app stay in the server (`src/worker/ws.rs`), which uses these modules as
//! `worker::ws_frames` and `worker::ws_deflate`.

pub mod deflate;
pub mod frames;
