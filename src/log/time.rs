//! Local-time stamps for both logs: `[2026-01-04 15:00:00 +0000]` on the
//! error log and `[04/Jan/2026:15:00:00 +0000]` for the access log's `t` atom.
//!
//! Turning a timestamp into local civil time is the costliest part of a log
//! line and a busy server writes many lines within one second, so each thread
//! keeps the last second it rendered in each style and reuses the bytes.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Local, Offset, Timelike};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    /// `[%Y-%m-%d %H:%M:%S %z]`
    Error = 0,
    /// `[%d/%b/%Y:%H:%M:%S %z]`, month names fixed to English as in the C locale.
    Access = 1,
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Broken-down local time of one second, with the UTC offset in effect then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub offset_secs: i32,
}

/// Whole seconds since the epoch, rounded down so that instants before 1970
/// still land in the second that contains them.
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 {
                -s - 1
            } else {
                -s
            }
        }
    }
}

/// Local civil time of `secs`. Instants chrono cannot represent print as the
/// epoch, because a log line must never fail.
pub(crate) fn civil(secs: i64) -> Civil {
    let utc = DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::UNIX_EPOCH);
    let local = utc.with_timezone(&Local);
    Civil {
        year: local.year(),
        month: local.month(),
        day: local.day(),
        hour: local.hour(),
        minute: local.minute(),
        second: local.second(),
        offset_secs: local.offset().fix().local_minus_utc(),
    }
}

fn push2(out: &mut Vec<u8>, v: u32) {
    let v = v % 100;
    out.push(b'0' + (v / 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

fn push_year(out: &mut Vec<u8>, year: i32) {
    if (0..10000).contains(&year) {
        let y = year as u32;
        push2(out, y / 100);
        push2(out, y % 100);
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(year).as_bytes());
    }
}

/// `%z` as the C library prints it: sign, then hours and minutes; leftover
/// seconds of historical offsets are dropped.
fn push_offset(out: &mut Vec<u8>, offset_secs: i32) {
    out.push(if offset_secs < 0 { b'-' } else { b'+' });
    let minutes = offset_secs.unsigned_abs() / 60;
    push2(out, minutes / 60);
    push2(out, minutes % 60);
}

pub(crate) fn render(out: &mut Vec<u8>, style: Style, c: &Civil) {
    out.push(b'[');
    match style {
        Style::Error => {
            push_year(out, c.year);
            out.push(b'-');
            push2(out, c.month);
            out.push(b'-');
            push2(out, c.day);
            out.push(b' ');
        }
        Style::Access => {
            push2(out, c.day);
            out.push(b'/');
            let m = (c.month as usize).clamp(1, 12) - 1;
            out.extend_from_slice(MONTHS[m]);
            out.push(b'/');
            push_year(out, c.year);
            out.push(b':');
        }
    }
    push2(out, c.hour);
    out.push(b':');
    push2(out, c.minute);
    out.push(b':');
    push2(out, c.second);
    out.push(b' ');
    push_offset(out, c.offset_secs);
    out.push(b']');
}

struct Slot {
    secs: i64,
    text: Vec<u8>,
}

thread_local! {
    static CACHE: RefCell<[Slot; 2]> = const {
        RefCell::new([
            Slot { secs: 0, text: Vec::new() },
            Slot { secs: 0, text: Vec::new() },
        ])
    };
}

/// Appends the bracketed local-time stamp of `t` in `style`.
pub(crate) fn push_stamp(out: &mut Vec<u8>, style: Style, t: SystemTime) {
    let secs = unix_secs(t);
    let cached = CACHE
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return false;
            };
            let slot = &mut cache[style as usize];
            if slot.text.is_empty() || slot.secs != secs {
                slot.text.clear();
                render(&mut slot.text, style, &civil(secs));
                slot.secs = secs;
            }
            out.extend_from_slice(&slot.text);
            true
        })
        .unwrap_or(false);
    // The cache is gone only while the thread itself is being torn down.
    if !cached {
        render(out, style, &civil(secs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn civ(offset_secs: i32) -> Civil {
        Civil {
            year: 2000,
            month: 10,
            day: 10,
            hour: 13,
            minute: 55,
            second: 36,
            offset_secs,
        }
    }

    fn rendered(style: Style, c: &Civil) -> String {
        let mut v = Vec::new();
        render(&mut v, style, c);
        String::from_utf8(v).expect("stamp is ASCII")
    }

    #[test]
    fn access_style_matches_common_log_format() {
        assert_eq!(
            rendered(Style::Access, &civ(-7 * 3600)),
            "[10/Oct/2000:13:55:36 -0700]"
        );
    }

    #[test]
    fn error_style_and_offsets() {
        assert_eq!(
            rendered(Style::Error, &civ(0)),
            "[2000-10-10 13:55:36 +0000]"
        );
        assert_eq!(
            rendered(Style::Error, &civ(5 * 3600 + 1800)),
            "[2000-10-10 13:55:36 +0530]"
        );
        assert_eq!(
            rendered(Style::Error, &civ(-(3 * 3600 + 1800))),
            "[2000-10-10 13:55:36 -0330]"
        );
        // Historical offsets with seconds keep only hours and minutes.
        assert_eq!(
            rendered(Style::Error, &civ(-(17 * 60 + 30))),
            "[2000-10-10 13:55:36 -0017]"
        );
    }

    #[test]
    fn every_month_name() {
        let names: Vec<String> = (1..=12)
            .map(|m| {
                let mut c = civ(0);
                c.month = m;
                rendered(Style::Access, &c)[4..7].to_string()
            })
            .collect();
        assert_eq!(
            names.join(" "),
            "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec"
        );
    }

    #[test]
    fn unix_secs_rounds_down() {
        assert_eq!(unix_secs(UNIX_EPOCH + Duration::from_millis(1500)), 1);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_millis(1500)), -2);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(3)), -3);
    }

    #[test]
    fn cached_stamp_follows_the_second() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut a = Vec::new();
        push_stamp(&mut a, Style::Error, t0);
        let mut b = Vec::new();
        push_stamp(&mut b, Style::Error, t0 + Duration::from_millis(999));
        assert_eq!(a, b);
        let mut c = Vec::new();
        push_stamp(&mut c, Style::Error, t0 + Duration::from_secs(1));
        assert_ne!(a, c);
        let mut direct = Vec::new();
        render(
            &mut direct,
            Style::Error,
            &civil(unix_secs(t0 + Duration::from_secs(1))),
        );
        assert_eq!(c, direct);
        // The two styles are cached apart.
        let mut d = Vec::new();
        push_stamp(&mut d, Style::Access, t0);
        assert_ne!(a, d);
    }
}
