//! A grant's limits beyond single statements, from the `[limits]` tables of its rule
//! files: rows per statement, statements per session, and the weekly window the grant
//! may be used in. When several files set the same limit the strictest wins; a grant
//! has one window.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What a grant's rule files limit beyond single statements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleLimits {
    /// Rows one statement may return to the client; the session ends past it.
    pub max_rows: Option<Limit>,
    /// Statements one session may run.
    pub max_statements: Option<Limit>,
    /// When the grant may be used at all.
    pub hours: Option<Hours>,
}

/// A number limit and the file that set it (named in every message it causes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub value: u64,
    pub file: PathBuf,
}

impl Limit {
    /// `max_rows = 1000 (rules/large-tables.toml)`.
    pub fn describe(&self, key: &str) -> String {
        format!("{key} = {} ({})", self.value, self.file.display())
    }
}

/// A weekly window in a fixed UTC offset: on `days`, from `from` until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    /// Monday first.
    pub days: [bool; 7],
    /// Minutes since midnight; `from < until`, `until` at most 24:00.
    pub from: u32,
    pub until: u32,
    /// Seconds east of UTC.
    pub offset: i32,
    pub file: PathBuf,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Hours {
    fn parse(raw: &RawHours, file: &Path) -> Result<Hours, String> {
        let day = |d: &str| {
            let d = d.trim().to_ascii_lowercase();
            DAY_NAMES
                .iter()
                .position(|n| d.starts_with(n) && n.len() <= d.len())
                .ok_or_else(|| format!("{d:?} is not a day (mon, tue, ..., sun)"))
        };
        let mut days = [false; 7];
        for entry in &raw.days {
            match entry.split_once('-') {
                Some((_, b)) if b.contains('-') => {
                    return Err(format!(
                        "days {entry:?}: write one day or one range (mon-fri)"
                    ))
                }
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    if a > b {
                        return Err(format!(
                            "days {entry:?} runs backwards; list the days of a week that wraps"
                        ));
                    }
                    days[a..=b].iter_mut().for_each(|d| *d = true);
                }
                None => days[day(entry)?] = true,
            }
        }
        if !days.contains(&true) {
            return Err("hours.days names no day".into());
        }
        let minutes = |t: &str, key: &str| {
            let (h, m) = t
                .split_once(':')
                .ok_or_else(|| format!("hours.{key} = {t:?}: write HH:MM"))?;
            let (h, m): (u32, u32) = match (h.parse(), m.parse()) {
                (Ok(h), Ok(m)) if m < 60 && (h < 24 || (h == 24 && m == 0)) => (h, m),
                _ => return Err(format!("hours.{key} = {t:?}: write HH:MM, 00:00 to 24:00")),
            };
            Ok(h * 60 + m)
        };
        let from = minutes(&raw.from, "from")?;
        let until = minutes(&raw.until, "until")?;
        if from >= until {
            return Err(format!(
                "hours from {} until {}: the window must end after it starts on the same day",
                raw.from, raw.until
            ));
        }
        let offset = match raw.utc_offset.as_deref() {
            None | Some("Z") | Some("UTC") => 0,
            Some(text) => {
                let sign = match text.chars().next() {
                    Some('+') => 1,
                    Some('-') => -1,
                    _ => {
                        return Err(format!(
                            "hours.utc_offset = {text:?}: write +HH:MM or -HH:MM"
                        ))
                    }
                };
                let m = minutes(&text[1..], "utc_offset")
                    .map_err(|_| format!("hours.utc_offset = {text:?}: write +HH:MM or -HH:MM"))?;
                if m > 14 * 60 {
                    return Err(format!("hours.utc_offset = {text:?} is beyond ±14:00"));
                }
                sign * (m as i32) * 60
            }
        };
        Ok(Hours {
            days,
            from,
            until,
            offset,
            file: file.to_owned(),
        })
    }

    /// When the window that `now` is in closes; `None` when `now` is outside it.
    pub fn window_end(&self, now: std::time::SystemTime) -> Option<std::time::SystemTime> {
        let secs = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64
            + i64::from(self.offset);
        let day_start = secs - secs.rem_euclid(86_400);
        // 1970-01-01 was a Thursday (index 3, Monday first).
        let weekday = ((secs.div_euclid(86_400) + 3).rem_euclid(7)) as usize;
        let minute = (secs - day_start) / 60;
        let inside =
            self.days[weekday] && minute >= i64::from(self.from) && minute < i64::from(self.until);
        if !inside {
            return None;
        }
        let end_local = day_start + i64::from(self.until) * 60;
        let end = end_local - i64::from(self.offset);
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(end.max(0) as u64))
    }
}

impl std::fmt::Display for Hours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days: Vec<&str> = DAY_NAMES
            .iter()
            .zip(self.days)
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        let sign = if self.offset < 0 { '-' } else { '+' };
        let off = self.offset.unsigned_abs() / 60;
        write!(
            f,
            "{} {}-{} UTC{sign}{:02}:{:02} ({})",
            days.join(","),
            hm(self.from),
            hm(self.until),
            off / 60,
            off % 60,
            self.file.display()
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_rows: Option<u64>,
    max_statements: Option<u64>,
    hours: Option<RawHours>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHours {
    days: Vec<String>,
    from: String,
    until: String,
    utc_offset: Option<String>,
}

impl RuleLimits {
    /// Adds one file's `[limits]`: the stricter number wins; one window per grant.
    pub(super) fn merge(&mut self, raw: &RawLimits, file: &Path) -> Result<(), String> {
        let stricter = |current: &mut Option<Limit>, value: Option<u64>, key: &str| {
            if let Some(value) = value {
                if value == 0 {
                    return Err(format!(
                        "{key} = 0 would allow nothing; remove the grant instead"
                    ));
                }
                if current.as_ref().is_none_or(|c| value < c.value) {
                    *current = Some(Limit {
                        value,
                        file: file.to_owned(),
                    });
                }
            }
            Ok(())
        };
        stricter(&mut self.max_rows, raw.max_rows, "max_rows")?;
        stricter(
            &mut self.max_statements,
            raw.max_statements,
            "max_statements",
        )?;
        if let Some(hours) = &raw.hours {
            if let Some(other) = &self.hours {
                return Err(format!(
                    "hours are set in {} already: a grant has one window",
                    other.file.display()
                ));
            }
            self.hours = Some(Hours::parse(hours, file)?);
        }
        Ok(())
    }
}
