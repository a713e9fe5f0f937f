//! `-u/--user`, `-g/--group` and `--initgroups`: workers drop to another user and group right after
//! fork; the master keeps its identity (it may need it to bind privileged ports again or to reopen
//! logs). Names are resolved when the configuration is read, so a typo is a usage error.

use std::ffi::CString;

use nix::unistd::{self, Gid, Group, Uid, User};

/// A user name or a numeric id, as gunicorn accepts them.
pub fn lookup_user(value: &str) -> Result<u32, String> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map_err(|_| format!("invalid user id: '{value}'"));
    }
    match User::from_name(value) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(format!("no such user: '{value}'")),
    }
}

/// A group name or a numeric id.
pub fn lookup_group(value: &str) -> Result<u32, String> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map_err(|_| format!("invalid group id: '{value}'"));
    }
    match Group::from_name(value) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(format!("no such group: '{value}'")),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(lookup_user("0"), Ok(0));
        assert_eq!(lookup_user("root"), Ok(0));
        assert_eq!(lookup_user(" 1234 "), Ok(1234));
        assert_eq!(
            lookup_user("no-such-user-fcn"),
            Err("no such user: 'no-such-user-fcn'".to_string())
        );
        assert!(lookup_user("-1").is_err());
        assert!(lookup_user("99999999999").is_err());
        assert_eq!(lookup_group("0"), Ok(0));
        assert_eq!(lookup_group("root"), Ok(0));
        assert_eq!(
            lookup_group("no-such-group-fcn"),
            Err("no such group: 'no-such-group-fcn'".to_string())
        );
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
