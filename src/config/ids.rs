//! `-u/--user` and `-g/--group` as they are written: a name or a numeric id, resolved against the user
//! and group databases when the configuration is read, so a typo is a usage error before anything
//! starts. Switching to them is `system::privileges`.

use nix::unistd::{Group, User};

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
}
