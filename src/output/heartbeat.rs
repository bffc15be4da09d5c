//! A line every few seconds while a step runs and stderr is no terminal (a
//! container's log, a file, a pipe): how far the step is, or that it still
//! runs, so that a log never goes silent for minutes. It owns only that
//! line; the events themselves stay the printer's.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the line comes when nothing else was said.
const EVERY: Duration = Duration::from_secs(10);

/// How far a metered step is, as its meter last said.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reading {
    pub done: u64,
    pub total: u64,
    pub unit: &'static str,
    pub bytes: Option<(u64, u64)>,
    /// How long the rest should take at the pace so far.
    pub eta: Option<Duration>,
}

#[derive(Debug)]
struct Activity {
    step: Option<(&'static str, Instant)>,
    reading: Option<Reading>,
    last_said: Instant,
    started: bool,
}

/// Shared between the printer and its heartbeat thread.
#[derive(Clone)]
pub(super) struct Heartbeat {
    enabled: bool,
    every: Duration,
    activity: Arc<Mutex<Activity>>,
}

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat {
            enabled: !std::io::stderr().is_terminal(),
            every: pgm_cluster::faults::progress_interval().unwrap_or(EVERY),
            activity: Arc::new(Mutex::new(Activity {
                step: None,
                reading: None,
                last_said: Instant::now(),
                started: false,
            })),
        }
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A step began: the thread starts with the first one.
    pub fn step_started(&self, step: &'static str) {
        if !self.enabled {
            return;
        }
        let mut activity = self.activity();
        activity.step = Some((step, Instant::now()));
        activity.reading = None;
        if !activity.started {
            activity.started = true;
            let beat = self.clone();
            let _ = std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || beat.run());
        }
    }

    pub fn step_ended(&self) {
        let mut activity = self.activity();
        activity.step = None;
        activity.reading = None;
    }

    pub fn said_something(&self) {
        self.activity().last_said = Instant::now();
    }

    pub fn read(&self, reading: Reading) {
        if self.enabled {
            self.activity().reading = Some(reading);
        }
    }

    fn run(&self) {
        let tick = (self.every / 4).min(Duration::from_secs(1));
        loop {
            std::thread::sleep(tick);
            let mut activity = self.activity();
            let Some((step, since)) = activity.step else {
                continue;
            };
            if activity.last_said.elapsed() < self.every {
                continue;
            }
            let line = line(step, since.elapsed(), activity.reading);
            activity.last_said = Instant::now();
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }
}

/// `  restore-schema: 12,345 of 80,000 objects (15%), 2 min 10 s so far`
pub(super) fn line(step: &str, elapsed: Duration, reading: Option<Reading>) -> String {
    let so_far = format!("{} so far", duration_words(elapsed));
    let Some(r) = reading else {
        return format!("  {step}: still running, {so_far}");
    };
    let so_far = match r.eta {
        Some(eta) => format!("{so_far}, about {} to go", duration_words(eta)),
        None => so_far,
    };
    let percent = |done: u64, total: u64| (done * 100).checked_div(total).unwrap_or(100);
    match r.bytes {
        Some((bytes, bytes_total)) => format!(
            "  {step}: {} of {} {}, {} of {} ({}%), {so_far}",
            thousands(r.done),
            thousands(r.total),
            r.unit,
            indicatif::HumanBytes(bytes),
            indicatif::HumanBytes(bytes_total),
            percent(bytes, bytes_total)
        ),
        None => format!(
            "  {step}: {} of {} {} ({}%), {so_far}",
            thousands(r.done),
            thousands(r.total),
            r.unit,
            percent(r.done, r.total)
        ),
    }
}

/// How long the rest of a step takes at its average pace so far: none
/// before it has run a few seconds (a first file, a first database, says
/// little of the others; a first estimate can be ten times off).
pub(super) fn steady_eta(elapsed: Duration, done: u64, total: u64) -> Option<Duration> {
    if elapsed < Duration::from_secs(3) || done == 0 || done >= total {
        return None;
    }
    let rest = elapsed.as_secs_f64() * (total - done) as f64 / done as f64;
    Some(Duration::from_secs_f64(rest.min(1e7)))
}

/// `2 min 10 s`, `45 s`, `1 h 2 min`.
pub(super) fn duration_words(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

/// 80000 as `80,000`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_how_far_and_how_long() {
        let reading = Reading {
            done: 12_345,
            total: 80_000,
            unit: "objects",
            bytes: None,
            eta: None,
        };
        assert_eq!(
            line("restore-schema", Duration::from_secs(130), Some(reading)),
            "  restore-schema: 12,345 of 80,000 objects (15%), 2 min 10 s so far"
        );
        assert_eq!(
            line("freeze", Duration::from_secs(65), None),
            "  freeze: still running, 1 min 5 s so far"
        );
        let bytes = Reading {
            done: 10,
            total: 40,
            unit: "files",
            bytes: Some((1 << 30, 4 << 30)),
            eta: steady_eta(Duration::from_secs(60), 1 << 30, 4 << 30),
        };
        assert_eq!(
            line("transfer", Duration::from_secs(3700), Some(bytes)),
            "  transfer: 10 of 40 files, 1.00 GiB of 4.00 GiB (25%), 1 h 1 min so far, about 3 min 0 s to go"
        );
        assert_eq!(steady_eta(Duration::from_secs(2), 1, 10), None);
        assert_eq!(steady_eta(Duration::from_secs(10), 0, 10), None);
        assert_eq!(steady_eta(Duration::from_secs(10), 10, 10), None);
        assert_eq!(
            steady_eta(Duration::from_secs(10), 1, 5),
            Some(Duration::from_secs(40))
        );
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
