//! When the master reports starvation (every app thread busy while connections wait), as episodes.
//!
//! An episode begins at the first tick that finds starvation and ends once none has been seen for
//! `GRACE`. Its first WARNING comes after it has lasted `GRACE`; while it goes on, the warning repeats at
//! most every `PERIOD`; when it ends, one line says so. The rate limit belongs to the episode: a later
//! episode is reported however soon it follows the last warning, so a backlog that fills, drains and fills
//! again is never silenced. Brief relief inside an episode (less than `GRACE`) does not split it.

use std::time::{Duration, Instant};

/// How long starvation must last before it is reported, and how long it must be gone to be over.
pub const GRACE: Duration = Duration::from_secs(1);
/// How often one episode is reported at most.
pub const PERIOD: Duration = Duration::from_secs(10);

struct Episode {
    since: Instant,
    /// Since when starvation has not been seen, inside the episode.
    calm_since: Option<Instant>,
    last_warning: Option<Instant>,
    warnings: u32,
}

/// What to log after a tick.
#[derive(Debug, PartialEq)]
pub enum Report {
    Nothing,
    /// A WARNING: starvation has lasted this long.
    Warn(Duration),
    /// The episode is over after lasting this long; it had been reported.
    Ended(Duration),
}

#[derive(Default)]
pub struct Watch {
    episode: Option<Episode>,
}

impl Watch {
    /// The tick at `now` found starvation or not.
    pub fn observe(&mut self, starved: bool, now: Instant) -> Report {
        if starved {
            let e = self.episode.get_or_insert(Episode {
                since: now,
                calm_since: None,
                last_warning: None,
                warnings: 0,
            });
            e.calm_since = None;
            let due = e
                .last_warning
                .is_none_or(|t| now.duration_since(t) >= PERIOD);
            if now.duration_since(e.since) >= GRACE && due {
                e.last_warning = Some(now);
                e.warnings += 1;
                return Report::Warn(now.duration_since(e.since));
            }
            return Report::Nothing;
        }
        let Some(e) = self.episode.as_mut() else {
            return Report::Nothing;
        };
        let calm = *e.calm_since.get_or_insert(now);
        if now.duration_since(calm) < GRACE {
            return Report::Nothing;
        }
        let lasted = calm.duration_since(e.since);
        let reported = e.warnings > 0;
        self.episode = None;
        if reported {
            Report::Ended(lasted)
        } else {
            Report::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks once a second: `pattern` has one character per tick, `#` starved, `.` not.
    fn run(pattern: &str) -> Vec<(usize, Report)> {
        let t0 = Instant::now();
        let mut w = Watch::default();
        pattern
            .chars()
            .enumerate()
            .map(|(i, c)| (i, w.observe(c == '#', t0 + Duration::from_secs(i as u64))))
            .filter(|(_, r)| *r != Report::Nothing)
            .collect()
    }

    #[test]
    fn each_episode_is_reported_however_soon_it_follows_the_last() {
        // Three episodes of 4 s, 3 s apart: all within one PERIOD of each other.
        let reports = run("####...####...####...");
        let warned: Vec<usize> = reports
            .iter()
            .filter(|(_, r)| matches!(r, Report::Warn(_)))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(warned, vec![1, 8, 15], "{reports:?}");
        let ended = reports
            .iter()
            .filter(|(_, r)| matches!(r, Report::Ended(_)))
            .count();
        assert_eq!(ended, 3, "{reports:?}");
        assert!(reports.contains(&(5, Report::Ended(Duration::from_secs(4)))));
    }

    #[test]
    fn a_long_episode_repeats_at_most_every_period() {
        let reports = run(&"#".repeat(25));
        let at: Vec<usize> = reports.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, vec![1, 11, 21]);
    }

    #[test]
    fn brief_relief_does_not_split_an_episode_and_a_blip_is_not_reported() {
        // One tick of relief (a thread freed for a moment) inside the episode.
        let reports = run("###.###..");
        let warned = reports
            .iter()
            .filter(|(_, r)| matches!(r, Report::Warn(_)))
            .count();
        assert_eq!(warned, 1, "{reports:?}");
        // Starvation seen on a single tick only: no warning, no end line.
        assert_eq!(run("#...#..."), vec![]);
    }
}
