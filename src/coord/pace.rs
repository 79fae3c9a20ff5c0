//! The migration's pace, user I/O first: an AIMD controller over the rebalance's byte and
//! operation rates. Once a window (about a second), the agent feeds it the client requests'
//! p99 (measured at the S3 endpoint) and the disks' average completion latency; above the
//! target two windows in a row the rates are halved from what the migration achieved, below
//! 80 % of it they grow by a sixteenth of the fastest seen. The cluster's fixed rate (`ferry cluster rate`) stays
//! a ceiling. Pure logic: time, latencies and throughput come in as a `Sample`.

use std::time::Duration;

/// Without `--user-p99` and before an idle baseline is known.
pub const DEFAULT_USER_P99: Duration = Duration::from_millis(50);
/// The target over the idle baseline, and its lowest value (loopback p99s are noise below).
pub const BASELINE_FACTOR: f64 = 1.25;
pub const MIN_TARGET: Duration = Duration::from_millis(2);
/// The disks' average completion latency target: this times the idle baseline, at least
/// DISK_MIN_TARGET.
pub const DISK_FACTOR: f64 = 4.0;
pub const DISK_MIN_TARGET: Duration = Duration::from_millis(20);
/// Fewer client requests in a window say nothing about their p99.
pub const MIN_REQUESTS: u64 = 8;
/// Windows over the target in a row before a decrease: one slow window on a shared machine
/// is noise, and the window right after a cut still shows the old rate's latencies.
pub const OVER_WINDOWS: u32 = 2;
/// The rates never go below these (the migration always makes progress).
pub const MIN_BYTES: u64 = 1 << 20;
pub const MIN_OPS: u64 = 20;

#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The client p99 target (None: BASELINE_FACTOR over the idle baseline).
    pub user_p99: Option<Duration>,
    /// The disks' completion latency target (None: from the idle baseline).
    pub disk_await: Option<Duration>,
}

/// One window's measurements.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Client requests served in the window and their p99 (µs).
    pub requests: u64,
    pub user_p99_us: u64,
    /// The disks' average completion latency (µs; None: not measurable here).
    pub disk_await_us: Option<u64>,
    /// What the migration did in the window, per second (None: no migration running).
    pub migration: Option<(u64, u64)>,
}

/// One rate (bytes/s or ops/s) under AIMD. `limit` 0: not limiting (the ceiling applies).
#[derive(Clone, Copy, Debug)]
struct Aimd {
    limit: u64,
    /// The fastest the migration went (per second), for the step and the release.
    peak: u64,
    floor: u64,
}

impl Aimd {
    fn new(floor: u64) -> Aimd {
        Aimd {
            limit: 0,
            peak: 0,
            floor,
        }
    }

    /// Halves from what the migration achieved (or the limit, if lower).
    fn decrease(&mut self, achieved: u64, ceiling: u64) {
        let mut cur = achieved;
        for cap in [self.limit, ceiling] {
            if cap != 0 {
                cur = cur.min(cap);
            }
        }
        self.limit = (cur / 2).max(self.floor);
    }

    /// Grows by a sixteenth of the fastest seen; released once past the ceiling (or twice
    /// the fastest seen without one).
    fn increase(&mut self, ceiling: u64) {
        if self.limit == 0 {
            return;
        }
        self.limit += (self.peak / 16).max(self.floor);
        let top = if ceiling != 0 {
            ceiling
        } else {
            self.peak.saturating_mul(2)
        };
        if self.limit >= top {
            self.limit = 0;
        }
    }

    /// The rate the migration may use: the lower of the limit and the ceiling (0: none).
    fn effective(&self, ceiling: u64) -> u64 {
        match (self.limit, ceiling) {
            (0, c) => c,
            (l, 0) => l,
            (l, c) => l.min(c),
        }
    }
}

/// What the controller decided in a window (for status and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Verdict {
    #[default]
    Idle,
    Over,
    Quiet,
    Hold,
}

pub struct Pace {
    settings: Settings,
    bytes: Aimd,
    ops: Aimd,
    /// Idle baselines (EWMA, µs) of the client p99 and the disks' latency.
    user_base: Option<f64>,
    disk_base: Option<f64>,
    /// Windows over the target in a row (since the last decrease).
    streak: u32,
    pub last: Sample,
    pub verdict: Verdict,
}

impl Pace {
    pub fn new(settings: Settings) -> Pace {
        Pace {
            settings,
            bytes: Aimd::new(MIN_BYTES),
            ops: Aimd::new(MIN_OPS),
            user_base: None,
            disk_base: None,
            streak: 0,
            last: Sample::default(),
            verdict: Verdict::Idle,
        }
    }

    /// The client p99 target (µs).
    pub fn user_target_us(&self) -> u64 {
        let d = self
            .settings
            .user_p99
            .unwrap_or_else(|| match self.user_base {
                Some(b) => Duration::from_micros((b * BASELINE_FACTOR) as u64).max(MIN_TARGET),
                None => DEFAULT_USER_P99,
            });
        d.as_micros() as u64
    }

    /// The disks' latency target (µs).
    pub fn disk_target_us(&self) -> u64 {
        let d = self.settings.disk_await.unwrap_or_else(|| {
            let b = self.disk_base.unwrap_or(0.0) * DISK_FACTOR;
            Duration::from_micros(b as u64).max(DISK_MIN_TARGET)
        });
        d.as_micros() as u64
    }

    /// The (bytes/s, ops/s) limits now under the ceiling `(bytes, ops)` (0: unlimited).
    pub fn rates(&self, ceiling: (u64, u64)) -> (u64, u64) {
        (
            self.bytes.effective(ceiling.0),
            self.ops.effective(ceiling.1),
        )
    }

    /// One window: learns the baseline while nothing migrates, else moves the rates.
    /// Returns the rates to apply.
    pub fn step(&mut self, s: Sample, ceiling: (u64, u64)) -> (u64, u64) {
        self.last = s;
        let Some((bytes, ops)) = s.migration else {
            self.learn(&s);
            self.verdict = Verdict::Idle;
            return self.rates(ceiling);
        };
        self.bytes.peak = self.bytes.peak.max(bytes);
        self.ops.peak = self.ops.peak.max(ops);
        let user = (s.requests >= MIN_REQUESTS).then_some(s.user_p99_us);
        let (ut, dt) = (self.user_target_us(), self.disk_target_us());
        let over = user.is_some_and(|p| p > ut) || s.disk_await_us.is_some_and(|d| d > dt);
        let quiet =
            user.is_none_or(|p| p * 5 < ut * 4) && s.disk_await_us.is_none_or(|d| d * 5 < dt * 4);
        let moving = bytes > 0 || ops > 0; // else scanning: the latency is not the migration's
        self.streak = if over && moving { self.streak + 1 } else { 0 };
        self.verdict = if !moving {
            Verdict::Hold
        } else if self.streak >= OVER_WINDOWS {
            self.bytes.decrease(bytes, ceiling.0);
            self.ops.decrease(ops, ceiling.1);
            self.streak = 0;
            Verdict::Over
        } else if over {
            Verdict::Hold
        } else if quiet {
            self.bytes.increase(ceiling.0);
            self.ops.increase(ceiling.1);
            Verdict::Quiet
        } else {
            Verdict::Hold
        };
        self.rates(ceiling)
    }

    fn learn(&mut self, s: &Sample) {
        let ewma = |base: &mut Option<f64>, v: u64| {
            *base = Some(base.map_or(v as f64, |b| 0.8 * b + 0.2 * v as f64));
        };
        if s.requests >= MIN_REQUESTS {
            ewma(&mut self.user_base, s.user_p99_us);
        }
        if let Some(d) = s.disk_await_us {
            ewma(&mut self.disk_base, d);
        }
    }
}

/// `20ms`, `1.5s`, `500us`, `2m`; a bare number is milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}': not a duration (e.g. 20ms, 1.5s)"))?;
    let secs = match unit.trim() {
        "" | "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "s" => v,
        "m" => v * 60.0,
        u => return Err(format!("'{s}': unknown unit '{u}' (us, ms, s, m)")),
    };
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("'{s}': use more than 0 and at most an hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn busy(p99_ms: u64, bytes: u64) -> Sample {
        Sample {
            requests: 500,
            user_p99_us: p99_ms * 1000,
            disk_await_us: None,
            migration: Some((bytes, bytes / MB * 10)),
        }
    }

    fn idle(p99_ms: u64) -> Sample {
        Sample {
            migration: None,
            ..busy(p99_ms, 0)
        }
    }

    #[test]
    fn the_target_comes_from_the_idle_baseline_or_the_flag() {
        let mut p = Pace::new(Settings::default());
        assert_eq!(p.user_target_us(), 50_000, "no baseline yet: the default");
        for _ in 0..20 {
            p.step(idle(8), (0, 0));
        }
        assert_eq!(p.user_target_us(), 10_000, "1.25x an 8 ms baseline");
        assert_eq!(p.rates((0, 0)), (0, 0), "idle: no limit");
        let mut q = Pace::new(Settings {
            user_p99: Some(Duration::from_millis(20)),
            disk_await: None,
        });
        q.step(idle(8), (0, 0));
        assert_eq!(q.user_target_us(), 20_000, "--user-p99 wins");
        let mut r = Pace::new(Settings::default());
        r.step(idle(0), (0, 0));
        assert_eq!(r.user_target_us(), 2_000, "never below MIN_TARGET");
    }

    #[test]
    fn latency_over_the_target_halves_the_rate_quiet_grows_it_back() {
        let mut p = Pace::new(Settings::default());
        for _ in 0..10 {
            p.step(idle(4), (0, 0));
        }
        // 5 ms target; unlimited migration at 200 MB/s pushes p99 to 30 ms
        assert_eq!(
            p.step(busy(30, 200 * MB), (0, 0)),
            (0, 0),
            "one slow window: noise"
        );
        assert_eq!(p.verdict, Verdict::Hold);
        let (b, o) = p.step(busy(30, 200 * MB), (0, 0));
        assert_eq!(p.verdict, Verdict::Over);
        assert_eq!(b, 100 * MB, "half of what it achieved");
        assert_eq!(o, 1000, "ops halve too");
        assert_eq!(
            p.step(busy(30, 100 * MB), (0, 0)).0,
            100 * MB,
            "the window after a cut shows the old rate: held"
        );
        assert_eq!(p.step(busy(30, 100 * MB), (0, 0)).0, 50 * MB);
        // quiet: +1/16 of the fastest seen (12.5 MB/s) per window
        let (b, _) = p.step(busy(2, 50 * MB), (0, 0));
        assert_eq!(p.verdict, Verdict::Quiet);
        assert_eq!(b, 50 * MB + 200 * MB / 16);
        // between 80 % and 100 % of the target: no change
        assert_eq!(p.step(busy(5, 60 * MB), (0, 0)).0, b);
        // a window that moved nothing (the scan) is not the migration's fault
        assert_eq!(p.step(busy(90, 0), (0, 0)).0, b);
        assert_eq!(p.verdict, Verdict::Hold);
    }

    #[test]
    fn the_rate_stays_between_the_floor_and_the_ceiling() {
        let mut p = Pace::new(Settings {
            user_p99: Some(Duration::from_millis(10)),
            disk_await: None,
        });
        let ceiling = (40 * MB, 0);
        for _ in 0..50 {
            let (b, o) = p.step(busy(500, 40 * MB), ceiling);
            assert!((MIN_BYTES..=40 * MB).contains(&b), "{b}");
            assert!(o == 0 || o >= MIN_OPS, "unlimited or above the floor: {o}");
        }
        assert_eq!(p.rates(ceiling).0, MIN_BYTES, "bad latency: the floor");
        let mut seen = Vec::new();
        for _ in 0..60 {
            seen.push(p.step(busy(1, 40 * MB), ceiling).0);
        }
        assert!(seen.windows(2).all(|w| w[1] >= w[0] || w[1] == 40 * MB));
        assert_eq!(*seen.last().unwrap(), 40 * MB, "quiet: back to the ceiling");
        assert_eq!(
            p.rates(ceiling),
            (40 * MB, 0),
            "released: the ceiling applies"
        );
    }

    /// A plant whose p99 grows with the migration rate above a knee: AIMD settles in a band
    /// below it instead of swinging wider and wider.
    #[test]
    fn against_a_plant_it_settles_in_a_band_without_blowing_up() {
        let mut p = Pace::new(Settings {
            user_p99: Some(Duration::from_millis(10)),
            disk_await: None,
        });
        let capacity = 300 * MB; // what the migration does unlimited
        let p99 = |rate: u64| 2 + rate.saturating_sub(80 * MB) / MB / 4; // 10 ms at 112 MB/s
        let mut rate = 0u64;
        let mut late = Vec::new();
        for w in 0..300 {
            let achieved = if rate == 0 {
                capacity
            } else {
                rate.min(capacity)
            };
            rate = p.step(busy(p99(achieved), achieved), (0, 0)).0;
            if w >= 100 {
                late.push(if rate == 0 { capacity } else { rate });
            }
        }
        let (lo, hi) = (*late.iter().min().unwrap(), *late.iter().max().unwrap());
        assert!(lo >= 40 * MB, "never starved: {lo}");
        assert!(hi <= 140 * MB, "never far above the knee: {hi}");
        let over = late.iter().filter(|&&r| p99(r) > 10).count();
        assert!(
            over * 4 <= late.len(),
            "{over} of {} windows over",
            late.len()
        );
    }

    #[test]
    fn isolated_slow_windows_do_not_cut_the_rate() {
        let mut p = Pace::new(Settings {
            user_p99: Some(Duration::from_millis(10)),
            disk_await: None,
        });
        for i in 0..40 {
            let p99 = if i % 2 == 0 { 80 } else { 9 };
            assert_eq!(p.step(busy(p99, 100 * MB), (0, 0)), (0, 0), "window {i}");
        }
        p.step(busy(80, 100 * MB), (0, 0));
        assert_eq!(
            p.step(busy(80, 100 * MB), (0, 0)).0,
            50 * MB,
            "two in a row do"
        );
    }

    #[test]
    fn a_slow_disk_slows_the_migration_without_client_requests() {
        let mut p = Pace::new(Settings::default());
        for _ in 0..10 {
            p.step(
                Sample {
                    disk_await_us: Some(2_000),
                    ..Sample::default()
                },
                (0, 0),
            );
        }
        assert_eq!(
            p.disk_target_us(),
            20_000,
            "4x 2 ms is below the 20 ms floor"
        );
        let s = Sample {
            disk_await_us: Some(90_000),
            migration: Some((64 * MB, 100)),
            ..Sample::default()
        };
        p.step(s, (0, 0));
        assert_eq!(p.step(s, (0, 0)), (32 * MB, 50));
        let few = Sample {
            requests: 3,
            user_p99_us: 900_000,
            disk_await_us: Some(1_000),
            migration: Some((32 * MB, 50)),
        };
        p.step(few, (0, 0));
        assert_eq!(p.verdict, Verdict::Quiet, "3 slow requests are not a p99");
    }

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_millis(15)));
        for bad in ["", "fast", "10h", "0ms", "-3ms", "2d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
