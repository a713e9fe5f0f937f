//! `-u/--user`, `-g/--group` and `--initgroups`: workers drop to another user and group right after
//! fork; the master keeps its identity (it may need it to bind privileged ports again or to reopen
//! logs). Names are resolved when the configuration is read (`config::ids`), so a typo is a usage
//! error.
//!
//! After the switch, [`unreadable`] tells why the worker can no longer read a directory the master
//! could (a Python installed under a private home directory), so the worker can say so instead of
//! failing later with a bare `ModuleNotFoundError`.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{self, AccessFlags, Gid, Group, Uid, User};

/// The user and group a worker should end up with, after the defaults are filled in: a user without a
/// group takes that user's primary group (rather than keeping the master's, which for a master run as
/// root would leave the worker in group 0).
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

pub fn target(uid: Option<u32>, gid: Option<u32>, current_uid: u32) -> Target {
    let switching_user = uid.filter(|u| *u != current_uid);
    let gid = gid.or_else(|| {
        switching_user
            .and_then(|u| User::from_uid(Uid::from_raw(u)).ok().flatten())
            .map(|u| u.gid.as_raw())
    });
    Target { uid, gid }
}

/// Switch this process (a freshly forked worker) to the configured user and group. As root, the
/// supplementary groups are replaced too: with `--initgroups`, by the user's groups from the group
/// database; otherwise by the target group alone, so no group of the master's leaks into the worker.
pub fn switch(uid: Option<u32>, gid: Option<u32>, initgroups: bool) -> Result<(), String> {
    let cur_uid = unistd::getuid().as_raw();
    let cur_gid = unistd::getgid().as_raw();
    let t = target(uid, gid, cur_uid);
    let change_uid = t.uid.filter(|u| *u != cur_uid);
    let change_gid = t.gid.filter(|g| *g != cur_gid);
    if change_uid.is_none() && change_gid.is_none() && !(initgroups && t.uid.is_some()) {
        return Ok(());
    }
    let group = t.gid.unwrap_or(cur_gid);
    if unistd::geteuid().is_root() {
        let user_name = User::from_uid(Uid::from_raw(t.uid.unwrap_or(cur_uid)))
            .ok()
            .flatten()
            .map(|u| u.name);
        match user_name.filter(|_| initgroups) {
            Some(name) => {
                let cname = CString::new(name.clone())
                    .map_err(|_| format!("invalid user name '{name}'"))?;
                unistd::initgroups(&cname, Gid::from_raw(group))
                    .map_err(|e| format!("initgroups({name}, {group}) failed: {e}"))?;
            }
            None => unistd::setgroups(&[Gid::from_raw(group)])
                .map_err(|e| format!("setgroups([{group}]) failed: {e}"))?,
        }
    }
    if let Some(g) = change_gid {
        unistd::setgid(Gid::from_raw(g)).map_err(|e| format!("setgid({g}) failed: {e}"))?;
    }
    if let Some(u) = change_uid {
        unistd::setuid(Uid::from_raw(u)).map_err(|e| format!("setuid({u}) failed: {e}"))?;
    }
    Ok(())
}

/// This process's user and group, as the log names them: `user nobody (uid 65534), group nogroup
/// (gid 65534)`.
pub fn identity() -> String {
    let uid = unistd::getuid();
    let gid = unistd::getgid();
    let user = User::from_uid(uid).ok().flatten().map(|u| u.name);
    let group = Group::from_gid(gid).ok().flatten().map(|g| g.name);
    let named = |kind: &str, name: Option<String>, id: u32, id_kind: &str| match name {
        Some(n) => format!("{kind} {n} ({id_kind} {id})"),
        None => format!("{kind} {id_kind} {id}"),
    };
    format!(
        "{}, {}",
        named("user", user, uid.as_raw(), "uid"),
        named("group", group, gid.as_raw(), "gid")
    )
}

/// Why this process cannot read the directory `path` (list it and open what is in it), or None when it
/// can: the first directory on the way that it may not enter, else `path` itself. Asked with access(2),
/// that is as the real user and groups: a switched worker's.
pub fn unreadable(path: &Path) -> Option<String> {
    let ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    for dir in ancestors.into_iter().rev() {
        if dir.as_os_str().is_empty() {
            continue;
        }
        if let Err(e) = unistd::access(dir, AccessFlags::X_OK) {
            return Some(refusal("cannot enter", dir, e));
        }
    }
    match unistd::access(path, AccessFlags::R_OK | AccessFlags::X_OK) {
        Ok(()) => None,
        Err(e) => Some(refusal("cannot read", path, e)),
    }
}

/// `cannot enter /root: drwx------ root:root`, or the error itself when it is not a permission.
fn refusal(what: &str, dir: &Path, e: Errno) -> String {
    if e != Errno::EACCES {
        return format!("{}: {}", dir.display(), e.desc());
    }
    match std::fs::metadata(dir) {
        Ok(m) => {
            let owner = User::from_uid(Uid::from_raw(m.uid()))
                .ok()
                .flatten()
                .map_or_else(|| m.uid().to_string(), |u| u.name);
            let group = Group::from_gid(Gid::from_raw(m.gid()))
                .ok()
                .flatten()
                .map_or_else(|| m.gid().to_string(), |g| g.name);
            format!(
                "{what} {}: {} {owner}:{group}",
                dir.display(),
                mode_string(m.mode())
            )
        }
        Err(_) => format!("{what} {}", dir.display()),
    }
}

/// `ls -l`'s rendering of a mode: `drwx------`, `drwxrwxrwt`.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFREG => '-',
        _ => '?',
    };
    let mut out = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        let exec = bits & 1 != 0;
        let special = match shift {
            6 => mode & libc::S_ISUID != 0,
            3 => mode & libc::S_ISGID != 0,
            _ => mode & libc::S_ISVTX != 0,
        };
        let (on, off) = match (shift, special) {
            (0, true) => ('t', 'T'),
            (_, true) => ('s', 'S'),
            _ => ('x', '-'),
        };
        out.push(if exec { on } else { off });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_as_ls_shows_them() {
        assert_eq!(mode_string(libc::S_IFDIR | 0o700), "drwx------");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(libc::S_IFREG | 0o4644), "-rwSr--r--");
        assert_eq!(mode_string(libc::S_IFDIR | 0o2755), "drwxr-sr-x");
    }

    #[test]
    fn readable_directories_and_missing_ones() {
        assert_eq!(unreadable(Path::new("/")), None);
        assert_eq!(unreadable(&std::env::temp_dir()), None);
        let missing = unreadable(Path::new("/no/such/dir/fcn")).expect("missing");
        assert!(missing.starts_with("/no: "), "{missing}");
        assert!(identity().starts_with("user "), "{}", identity());
    }

    #[test]
    fn user_without_group_takes_its_primary_group() {
        // root's primary group is 0 on every Linux system.
        assert_eq!(
            target(Some(0), None, 12345),
            Target {
                uid: Some(0),
                gid: Some(0)
            }
        );
        // Not switching: no group is implied.
        assert_eq!(
            target(Some(0), None, 0),
            Target {
                uid: Some(0),
                gid: None
            }
        );
        assert_eq!(
            target(None, Some(7), 0),
            Target {
                uid: None,
                gid: Some(7)
            }
        );
    }
}
