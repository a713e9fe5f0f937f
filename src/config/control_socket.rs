//! Where the control socket is when `--control-socket` does not say, and the mode of its file: the
//! defaults of two settings, which the master (binding it) and `ferricornctl` (finding it) share.

use std::path::{Path, PathBuf};

/// The socket's file name, in `$XDG_RUNTIME_DIR` or `~/.ferricorn/`.
pub const SOCKET_NAME: &str = "ferricorn.ctl";
/// Mode of the socket file unless `--control-socket-mode` says otherwise: the owner only.
pub const DEFAULT_MODE: u32 = 0o600;

/// The default socket path, after gunicorn's rule: `$XDG_RUNTIME_DIR/ferricorn.ctl` when that variable
/// names a directory, else `$HOME/.ferricorn/ferricorn.ctl`.
pub fn default_socket_path(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty() && Path::new(d).is_dir()) {
        return Path::new(&dir).join(SOCKET_NAME);
    }
    let home = env("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".ferricorn").join(SOCKET_NAME)
}

/// [`default_socket_path`] from the process environment.
pub fn default_socket_path_from_env() -> PathBuf {
    default_socket_path(&|k| std::env::var(k).ok())
}
