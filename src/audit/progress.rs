//! Progress on stderr for the long trail walks (`sqlgate audit verify`, `sqlgate audit
//! export`): "\rexporting: 412 MB of 1.2 GB (34%)", measured in bytes of the segment
//! files read, redrawn at most five times a second, and only when stderr is a
//! terminal — a pipe, a file or CI gets nothing. A walk shorter than the first redraw
//! interval prints nothing at all.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Redraw at most this often.
const INTERVAL: Duration = Duration::from_millis(200);

/// Look at the clock only every this many updates (updates come once per record).
const CHECK_EVERY: u32 = 256;

/// A progress line on stderr.
pub struct Progress {
    label: &'static str,
    total: u64,
    enabled: bool,
    last: Instant,
    updates: u32,
    shown: bool,
}

impl Progress {
    /// A progress line for a walk over `total` bytes, shown only when stderr is a terminal.
    pub fn new(label: &'static str, total: u64) -> Self {
        Self::with(label, total, std::io::stderr().is_terminal())
    }

    /// A progress line that is never shown.
    pub fn hidden() -> Self {
        Self::with("", 0, false)
    }

    fn with(label: &'static str, total: u64, enabled: bool) -> Self {
        Progress {
            label,
            total,
            enabled,
            last: Instant::now(),
            updates: 0,
            shown: false,
        }
    }

    /// `done` bytes of the total have been read.
    pub fn update(&mut self, done: u64) {
        if !self.enabled {
            return;
        }
        self.updates = self.updates.wrapping_add(1);
        if !self.updates.is_multiple_of(CHECK_EVERY) || self.last.elapsed() < INTERVAL {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        let mut err = std::io::stderr().lock();
        // Progress is a courtesy: a failed write to stderr is not an error of the walk.
        let _ = write!(err, "\r\x1b[2K{}", line(self.label, done, self.total));
        let _ = err.flush();
    }

    /// Clears the line, if one was drawn (the summary that follows starts clean).
    pub fn finish(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The sum of the sizes of `files` (missing ones count 0): the total a walk reads.
pub fn total_bytes(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// "exporting: 412 MB of 1.2 GB (34%)". The active segment can grow during the walk,
/// so `done` may pass `total`: the percentage stops at 100.
pub fn line(label: &str, done: u64, total: u64) -> String {
    let percent = if total == 0 {
        100
    } else {
        (u128::from(done) * 100 / u128::from(total)).min(100)
    };
    format!(
        "{label}: {} of {} ({percent}%)",
        human_bytes(done),
        human_bytes(total)
    )
}

/// Decimal units, as `ls -h --si` and `du --si` print them.
fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1_000_000_000, "GB"), (1_000_000, "MB"), (1_000, "kB")];
    for (size, unit) in UNITS {
        if n >= size {
            let value = n as f64 / size as f64;
            return if value < 10.0 {
                format!("{value:.1} {unit}")
            } else {
                format!("{value:.0} {unit}")
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_done_total_and_percent() {
        assert_eq!(
            line("exporting", 412_000_000, 1_200_000_000),
            "exporting: 412 MB of 1.2 GB (34%)"
        );
        assert_eq!(line("verifying", 0, 0), "verifying: 0 B of 0 B (100%)");
        assert_eq!(
            line("verifying", 900, 2_500),
            "verifying: 900 B of 2.5 kB (36%)"
        );
        // A growing active segment: never past 100%.
        assert_eq!(line("x", 3_000, 2_000), "x: 3.0 kB of 2.0 kB (100%)");
        assert_eq!(
            line("x", u64::MAX, u64::MAX),
            "x: 18446744074 GB of 18446744074 GB (100%)"
        );
    }

    #[test]
    fn a_hidden_progress_prints_nothing_and_costs_nothing() {
        let mut p = Progress::hidden();
        for i in 0..10_000 {
            p.update(i);
        }
        assert!(!p.shown);
    }
}
