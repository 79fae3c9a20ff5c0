//! The migration's pace, user I/O first: an AIMD controller over the rebalance's byte and
//! operation rates. Once a window (about a second), the agent feeds it the client requests'
//! p99 (measured at the S3 endpoint) and the disks' average completion latency, each as a
//! level (its latency over its target). A run begins at a conservative rate and grows from
//! there; two windows over the target in a row cut the rates from what the migration
//! achieved (the further over, the deeper, x0.5 to x0.8); while the median of the last three
//! windows is below QUIET of the target they grow by the headroom but at least 25 % a
//! window, slowly (probing) near the rate last cut from. The cluster's fixed rate
//! (`ferry cluster rate`) stays a ceiling. Pure logic: time, latencies and throughput come
//! in as a `Sample`.

use std::time::Duration;

/// Without `--user-p99` and before an idle baseline is known.
pub const DEFAULT_USER_P99: Duration = Duration::from_millis(50);
/// The target over the idle baseline (the goal is 1.5x: the margin is the controller's
/// overshoot), and its lowest value (loopback p99s are noise below).
pub const BASELINE_FACTOR: f64 = 1.4;
pub const MIN_TARGET: Duration = Duration::from_millis(2);
/// The disks' average completion latency target: this times the idle baseline, at least
/// DISK_MIN_TARGET.
pub const DISK_FACTOR: f64 = 4.0;
pub const DISK_MIN_TARGET: Duration = Duration::from_millis(20);
/// Fewer client requests in a window say nothing about their p99.
pub const MIN_REQUESTS: u64 = 8;
/// The client p99 baseline is the mean of the last IDLE_WINDOWS idle windows' p99s: an
/// agent sees its share of the clients (~50 requests a second in the bench), so a window's
/// p99 is its slowest request or two, and an average weighted to the last few windows gave
/// agents of one cluster baselines 1.6x apart (4.9 vs 7.7 ms), the lower one "over" in most
/// windows of a migration the clients' own p99 did not notice (1.0-1.3x).
pub const IDLE_WINDOWS: usize = 31;
/// Windows over the target in a row before a cut: one slow window on a shared machine is
/// noise, and the window right after a cut still shows the old rate's latencies.
pub const OVER_WINDOWS: usize = 2;
/// A window's p99 of fewer client requests than this is its slowest one or two (an agent
/// sees its share of the clients: 50 of 200 a second in the bench), over a target of 1.4x
/// the idle one in every other window while the clients' own p99 is under it: a cut then
/// takes HISTORY windows over in a row.
pub const P99_REQUESTS: u64 = 100;
/// The windows whose median says "quiet" (one noisy window in them does not count).
pub const HISTORY: usize = 3;
/// Quiet: the median level below this fraction of the target (between it and the target the
/// rates hold: the hysteresis band).
pub const QUIET: f64 = 0.9;
/// A cut multiplies the achieved rate by CUT_AIM / level, kept within [MIN_CUT, MAX_CUT].
pub const CUT_AIM: f64 = 0.9;
pub const MIN_CUT: f64 = 0.5;
pub const MAX_CUT: f64 = 0.8;
/// A cut must lower the level by this factor in the two windows after it (if they are still
/// over); else it is undone and no cut follows for CALM_WINDOWS windows: the latency is not
/// the migration's (other processes, the rebalance's own reads elsewhere), and cutting
/// further would only starve the migration.
pub const NO_GAIN: f64 = 0.9;
pub const CALM_WINDOWS: u32 = 5;
/// Growth per quiet window: the headroom (1 - level) but at least MIN_GROWTH and at most
/// FAST_GROWTH; PROBE_GROWTH between PROBE_NEAR and PROBE_PAST of the rate last cut from
/// (past that band the cut's rate was not where the room ends: a noisy pair of windows, or
/// the load changed). The floor matters where a migration's room ends steeply: the p99 sits
/// near the target with little headroom long before it, and growth by the headroom alone
/// would not find the leftover within a rebalance (+25 % a window: 8 -> 30 MiB/s in 6).
pub const MIN_GROWTH: f64 = 0.25;
pub const FAST_GROWTH: f64 = 0.5;
pub const PROBE_GROWTH: f64 = 0.1;
pub const PROBE_NEAR: f64 = 0.8;
pub const PROBE_PAST: f64 = 1.25;
/// Where a run begins without a limit in force (bytes/s; or half the fastest seen, if more):
/// the first seconds after a topology switch are the clients' worst (every node scans), and
/// an unpaced start spends them at the migration's full rate.
pub const START_BYTES: u64 = 8 << 20;
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
    /// The fastest the migration went (per second), for the release and the next start.
    peak: u64,
    floor: u64,
    /// Where a run begins (0: unlimited unless a peak is known).
    start: u64,
    /// The rate of the last cut (0: none yet): growth slows near it.
    cut_from: u64,
}

impl Aimd {
    fn new(floor: u64, start: u64) -> Aimd {
        Aimd {
            limit: 0,
            peak: 0,
            floor,
            start,
            cut_from: 0,
        }
    }

    /// A run begins: without a limit in force, at the start rate or half the fastest seen.
    fn begin(&mut self) {
        if self.limit == 0 {
            self.limit = self.start.max(self.peak / 2);
            if self.limit != 0 {
                self.limit = self.limit.max(self.floor);
            }
        }
    }

    /// Cuts to `factor` of what the migration achieved (or the limit or ceiling, if lower).
    fn decrease(&mut self, achieved: u64, ceiling: u64, factor: f64) {
        let mut cur = achieved;
        for cap in [self.limit, ceiling] {
            if cap != 0 {
                cur = cur.min(cap);
            }
        }
        self.cut_from = cur;
        self.limit = ((cur as f64 * factor) as u64).max(self.floor);
    }

    /// Grows by `headroom` of the limit (within [MIN_GROWTH, FAST_GROWTH], PROBE_GROWTH near
    /// the last cut's rate); released once past the ceiling (or twice the fastest seen
    /// without one: the limit no longer binds).
    fn increase(&mut self, ceiling: u64, headroom: f64) {
        if self.limit == 0 {
            return;
        }
        let (l, c) = (self.limit as f64, self.cut_from as f64);
        let near = (PROBE_NEAR * c..PROBE_PAST * c).contains(&l);
        let g = if near {
            PROBE_GROWTH
        } else {
            headroom.clamp(MIN_GROWTH, FAST_GROWTH)
        };
        self.limit += ((self.limit as f64 * g) as u64).max(self.floor);
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
    /// The last cut did not lower the latency: the limits are back where they were.
    Undone,
}

/// A cut: the level that caused it and the (bytes, ops) limits before it.
#[derive(Clone, Copy, Debug)]
struct Cut {
    level: f64,
    limits: (u64, u64),
}

/// A window the migration moved in: its level (the larger of the client p99 and the disks'
/// latency over their targets; 0: neither measured) and its rates.
#[derive(Clone, Copy, Debug)]
struct Seen {
    level: f64,
    requests: u64,
    bytes: u64,
    ops: u64,
}

pub struct Pace {
    settings: Settings,
    bytes: Aimd,
    ops: Aimd,
    /// The last IDLE_WINDOWS idle windows' client p99s (µs; oldest first) and the disks'
    /// latency baseline (EWMA, µs).
    user_idle: std::collections::VecDeque<u64>,
    disk_base: Option<f64>,
    /// The last HISTORY windows that moved, since the last cut (oldest first).
    seen: Vec<Seen>,
    /// The last cut, until the windows after it judged it.
    cut: Option<Cut>,
    /// Windows left without cuts after one was undone.
    calm: u32,
    pub last: Sample,
    pub verdict: Verdict,
}

impl Pace {
    pub fn new(settings: Settings) -> Pace {
        Pace {
            settings,
            bytes: Aimd::new(MIN_BYTES, START_BYTES),
            ops: Aimd::new(MIN_OPS, 0),
            user_idle: std::collections::VecDeque::with_capacity(IDLE_WINDOWS),
            disk_base: None,
            seen: Vec::with_capacity(HISTORY),
            cut: None,
            calm: 0,
            last: Sample::default(),
            verdict: Verdict::Idle,
        }
    }

    /// The client p99 target (µs).
    pub fn user_target_us(&self) -> u64 {
        let d = self
            .settings
            .user_p99
            .unwrap_or_else(|| match self.user_base() {
                Some(b) => Duration::from_micros((b * BASELINE_FACTOR) as u64).max(MIN_TARGET),
                None => DEFAULT_USER_P99,
            });
        d.as_micros() as u64
    }

    /// The client p99 baseline (µs): the mean of the idle windows seen (a spike of other
    /// processes' counts 1/IDLE_WINDOWS; in the weighted average before, 1/5).
    fn user_base(&self) -> Option<f64> {
        let n = self.user_idle.len();
        (n > 0).then(|| self.user_idle.iter().sum::<u64>() as f64 / n as f64)
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

    /// A migration run begins (before it moves anything): without a limit in force, the rates
    /// start conservatively. Returns the rates to apply.
    pub fn begin(&mut self, ceiling: (u64, u64)) -> (u64, u64) {
        self.bytes.begin();
        self.ops.begin();
        self.seen.clear();
        self.cut = None;
        self.rates(ceiling)
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
        if bytes == 0 && ops == 0 {
            // scanning: the latency is not the migration's
            self.verdict = Verdict::Hold;
            return self.rates(ceiling);
        }
        if self.seen.len() == HISTORY {
            self.seen.remove(0);
        }
        let level = self.level(&s);
        self.seen.push(Seen {
            level,
            requests: s.requests,
            bytes,
            ops,
        });
        self.calm = self.calm.saturating_sub(1);
        self.verdict = self.judge(ceiling);
        self.rates(ceiling)
    }

    /// The window's verdict on the windows seen: a cut, growth, a hold, or the last cut
    /// undone (judged once, by the two windows after it: still over and not lower by
    /// NO_GAIN, the latency is not the migration's).
    fn judge(&mut self, ceiling: (u64, u64)) -> Verdict {
        let last_cut = if self.seen.len() >= OVER_WINDOWS {
            self.cut.take()
        } else {
            None
        };
        let Some((level, bytes, ops)) = self.over() else {
            return match self.quiet() {
                Some(m) => {
                    self.bytes.increase(ceiling.0, 1.0 - m);
                    self.ops.increase(ceiling.1, 1.0 - m);
                    Verdict::Quiet
                }
                None => Verdict::Hold,
            };
        };
        if let Some(c) = last_cut.filter(|c| level > NO_GAIN * c.level) {
            (self.bytes.limit, self.ops.limit) = c.limits;
            self.calm = CALM_WINDOWS;
            return Verdict::Undone;
        }
        if self.calm > 0 {
            return Verdict::Hold;
        }
        self.cut = Some(Cut {
            level,
            limits: (self.bytes.limit, self.ops.limit),
        });
        let factor = (CUT_AIM / level).clamp(MIN_CUT, MAX_CUT);
        self.bytes.decrease(bytes, ceiling.0, factor);
        self.ops.decrease(ops, ceiling.1, factor);
        self.seen.clear();
        Verdict::Over
    }

    /// The window's level: the larger of the client p99 and the disks' latency over their
    /// targets (a p99 of too few requests, or a latency not measured, counts 0).
    fn level(&self, s: &Sample) -> f64 {
        let user = (s.requests >= MIN_REQUESTS)
            .then(|| s.user_p99_us as f64 / self.user_target_us().max(1) as f64);
        let disk = s
            .disk_await_us
            .map(|d| d as f64 / self.disk_target_us().max(1) as f64);
        user.unwrap_or(0.0).max(disk.unwrap_or(0.0))
    }

    /// The last OVER_WINDOWS windows all over the target (HISTORY if one of them has a p99 of
    /// fewer than P99_REQUESTS requests): the lowest level of them and what they moved (the
    /// mean).
    fn over(&self) -> Option<(f64, u64, u64)> {
        let n = self.seen.len();
        if n < OVER_WINDOWS {
            return None;
        }
        let few = |w: &Seen| (MIN_REQUESTS..P99_REQUESTS).contains(&w.requests);
        let k = match self.seen[n - OVER_WINDOWS..].iter().any(few) {
            true => HISTORY,
            false => OVER_WINDOWS,
        };
        let last = &self.seen[n.checked_sub(k)?..];
        if last.iter().any(|w| w.level <= 1.0) {
            return None;
        }
        let level = last.iter().map(|w| w.level).fold(f64::INFINITY, f64::min);
        let mean = |f: fn(&Seen) -> u64| last.iter().map(f).sum::<u64>() / k as u64;
        Some((level, mean(|w| w.bytes), mean(|w| w.ops)))
    }

    /// Quiet: the median level of the windows seen (of two, the higher) below QUIET, and the
    /// newest one not over the target. Returns that median.
    fn quiet(&self) -> Option<f64> {
        let newest = self.seen.last()?.level;
        let mut levels: Vec<f64> = self.seen.iter().map(|w| w.level).collect();
        levels.sort_by(f64::total_cmp);
        let m = levels[levels.len() / 2];
        (m < QUIET && newest <= 1.0).then_some(m)
    }

    fn learn(&mut self, s: &Sample) {
        let ewma = |base: &mut Option<f64>, v: u64| {
            *base = Some(base.map_or(v as f64, |b| 0.8 * b + 0.2 * v as f64));
        };
        if s.requests >= MIN_REQUESTS {
            if self.user_idle.len() == IDLE_WINDOWS {
                self.user_idle.pop_front();
            }
            self.user_idle.push_back(s.user_p99_us);
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
        assert_eq!(p.user_target_us(), 11_200, "1.4x an 8 ms baseline");
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

    /// An agent's idle p99s are its slowest request or two of ~50: they swing 3x window to
    /// window. The baseline is their mean, whatever the last few windows were.
    #[test]
    fn the_baseline_is_the_mean_of_noisy_idle_windows() {
        let mut p = Pace::new(Settings::default());
        let swings = [4, 12, 7, 5, 11, 8, 6, 10, 9, 4, 12, 8, 7, 5, 11, 9];
        for ms in swings.iter().chain(&[4, 4, 4, 4, 4]) {
            p.step(idle(*ms), (0, 0));
        }
        // 21 windows of 148 ms in all (a weighted average of the last few would be ~4.5 ms)
        assert_eq!(p.user_target_us(), 9_866, "1.4x their mean 7.05 ms");
        for _ in 0..IDLE_WINDOWS {
            p.step(idle(10), (0, 0));
        }
        assert_eq!(
            p.user_target_us(),
            14_000,
            "only the last IDLE_WINDOWS count"
        );
    }

    #[test]
    fn latency_over_the_target_cuts_the_rate_quiet_grows_it_back() {
        let mut p = Pace::new(Settings::default());
        for _ in 0..10 {
            p.step(idle(4), (0, 0));
        }
        assert_eq!(p.user_target_us(), 5_600, "1.4x a 4 ms baseline");
        // unlimited migration at 200 MB/s pushes p99 to 30 ms (5.4x the target)
        assert_eq!(
            p.step(busy(30, 200 * MB), (0, 0)),
            (0, 0),
            "one slow window: noise"
        );
        assert_eq!(p.verdict, Verdict::Hold);
        let (b, o) = p.step(busy(30, 200 * MB), (0, 0));
        assert_eq!(p.verdict, Verdict::Over);
        assert_eq!(b, 100 * MB, "far over: half of what it achieved");
        assert_eq!(o, 1000, "ops cut too");
        assert_eq!(
            p.step(busy(30, 100 * MB), (0, 0)).0,
            100 * MB,
            "the window after a cut shows the old rate: held"
        );
        // 20 ms at half the rate: the cut helped, still far over: cut again
        assert_eq!(p.step(busy(20, 100 * MB), (0, 0)).0, 50 * MB);
        // quiet (2 ms: headroom 64 %): +50 % while far below the rate last cut from (100)
        let (b, _) = p.step(busy(2, 50 * MB), (0, 0));
        assert_eq!(p.verdict, Verdict::Quiet);
        assert_eq!(b, 75 * MB);
        let b = p.step(busy(2, 75 * MB), (0, 0)).0;
        assert_eq!(b, 75 * MB + 75 * MB / 2);
        // from 80 % of the rate last cut from on: probing, +10 %
        let b2 = p.step(busy(2, b), (0, 0)).0;
        assert_eq!(b2, b + b / 10);
        // one slow window after quiet ones: the median is quiet, but it does not grow
        assert_eq!(p.step(busy(9, b2), (0, 0)).0, b2);
        assert_eq!(p.verdict, Verdict::Hold);
        // between QUIET and the target (5.3 ms of 5.6): the hysteresis band holds
        let band = Sample {
            user_p99_us: 5_300,
            ..busy(0, b2)
        };
        for _ in 0..3 {
            assert_eq!(p.step(band, (0, 0)).0, b2);
            assert_eq!(p.verdict, Verdict::Hold);
        }
        // a window that moved nothing (the scan) is not the migration's fault
        assert_eq!(p.step(busy(90, 0), (0, 0)).0, b2);
        assert_eq!(p.verdict, Verdict::Hold);
        // a little over, twice: a gentle cut (x0.8 of what it achieved)
        let slight = Sample {
            user_p99_us: 5_900,
            ..busy(0, 60 * MB)
        };
        p.step(slight, (0, 0));
        assert_eq!(p.step(slight, (0, 0)).0, 48 * MB);
    }

    #[test]
    fn a_run_begins_at_a_conservative_rate() {
        let mut p = Pace::new(Settings::default());
        for _ in 0..10 {
            p.step(idle(7), (0, 0));
        }
        assert_eq!(p.rates((0, 0)), (0, 0), "idle: no limit");
        assert_eq!(
            p.begin((0, 0)),
            (START_BYTES, 0),
            "the start rate, ops free"
        );
        assert_eq!(
            p.rates((4 * MB, 0)),
            (4 * MB, 0),
            "the ceiling still caps it"
        );
        // quiet windows: it grows from there, by the headroom
        let b = p.step(busy(1, START_BYTES), (0, 0)).0;
        assert_eq!(b, START_BYTES + START_BYTES / 2);
        assert_eq!(p.begin((0, 0)).0, b, "a limit in force is kept");
        let mut q = Pace::new(Settings::default());
        q.step(idle(7), (0, 0));
        q.step(busy(1, 100 * MB), (0, 0)); // unlimited, quiet
        assert_eq!(q.begin((0, 0)), (50 * MB, 500), "half the fastest seen");
    }

    #[test]
    fn the_rate_stays_between_the_floor_and_the_ceiling() {
        let mut p = Pace::new(Settings {
            user_p99: Some(Duration::from_millis(10)),
            disk_await: None,
        });
        let ceiling = (40 * MB, 0);
        let mut b = 40 * MB;
        for _ in 0..50 {
            // 25 ms per MB/s: over the 10 ms target down to the floor, each cut helping
            let o;
            (b, o) = p.step(busy(25 * b / MB, b), ceiling);
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

    /// A simulated node: a 7 ms idle p99; a migration that does `capacity` unlimited and
    /// pushes the p99 to `p99_us(rate)`; each window's p99 off by up to 20 % and, with
    /// `spikes`, every seventh window 3x (other processes).
    struct Plant {
        p99_us: fn(u64) -> f64,
        capacity: u64,
        spikes: bool,
        /// How far a window's p99 is off at most (0.2: 20 %).
        noise: f64,
        rng: u64,
    }

    const BASE_US: f64 = 7_000.0;

    impl Plant {
        fn new(p99_us: fn(u64) -> f64, capacity: u64, spikes: bool) -> Plant {
            Plant {
                p99_us,
                capacity,
                spikes,
                noise: 0.2,
                rng: 0x9e37_79b9_7f4a_7c15,
            }
        }

        fn noise(&mut self) -> f64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            1.0 - self.noise + 2.0 * self.noise * (self.rng % 1000) as f64 / 1000.0
        }

        /// 20 idle windows (the baseline), then a run from a cold start for `windows`
        /// windows: each one's achieved rate and its p99 without the noise (µs).
        fn run(&mut self, p: &mut Pace, windows: usize) -> Vec<(u64, f64)> {
            for _ in 0..20 {
                let s = Sample {
                    user_p99_us: (BASE_US * self.noise()) as u64,
                    ..idle(0)
                };
                p.step(s, (0, 0));
            }
            let mut rate = p.begin((0, 0)).0;
            let mut out = Vec::with_capacity(windows);
            for w in 0..windows {
                let achieved = if rate == 0 {
                    self.capacity
                } else {
                    rate.min(self.capacity)
                };
                let spike = if self.spikes && w % 7 == 3 { 3.0 } else { 1.0 };
                let p99 = (self.p99_us)(achieved);
                let s = Sample {
                    user_p99_us: (p99 * self.noise() * spike) as u64,
                    ..busy(0, achieved)
                };
                rate = p.step(s, (0, 0)).0;
                out.push((achieved, p99));
            }
            out
        }
    }

    /// The median and the lowest rate, and the median p99 (µs), of `windows`.
    fn settled(windows: &[(u64, f64)]) -> (u64, u64, f64) {
        let mut rates: Vec<u64> = windows.iter().map(|w| w.0).collect();
        let mut p99s: Vec<f64> = windows.iter().map(|w| w.1).collect();
        rates.sort();
        p99s.sort_by(f64::total_cmp);
        (rates[rates.len() / 2], rates[0], p99s[p99s.len() / 2])
    }

    /// A plant like this machine's: the p99 rising with the square of the migration rate
    /// (1.5x at 40 MB/s), noisy, with spikes. From the conservative start the pace settles
    /// with the p99 within 1.5x of the baseline, at >= 70 % of the rate where the p99
    /// reaches 1.5x, and the spikes never collapse the rate.
    #[test]
    fn against_a_noisy_plant_it_holds_the_p99_and_uses_most_of_the_room() {
        let mut p = Pace::new(Settings::default());
        let knee = 40.0 * MB as f64; // p99 1.5x the baseline here
        let p99_us = |rate: u64| BASE_US * (1.0 + 0.5 * (rate as f64 / (40.0 * MB as f64)).powi(2));
        let out = Plant::new(p99_us, 150 * MB, true).run(&mut p, 300);
        let (median, lo, p99) = settled(&out[60..]);
        assert!(p99 <= 1.5 * BASE_US, "median p99 {p99} us over 1.5x 7 ms");
        assert!(
            median as f64 >= 0.7 * knee,
            "median rate {} MB/s",
            median / MB
        );
        assert!(lo as f64 >= 0.5 * knee, "collapsed to {} MB/s", lo / MB);
    }

    /// `seeds` runs of a plant from a cold start: each run's windows.
    fn runs(p99_us: fn(u64) -> f64, capacity: u64, noise: f64, n: usize) -> Vec<Vec<(u64, f64)>> {
        (0..6u64)
            .map(|seed| {
                let mut p = Pace::new(Settings::default());
                let mut plant = Plant::new(p99_us, capacity, seed % 2 == 1 && noise > 0.1);
                plant.noise = noise;
                plant.rng ^= seed * 0x1234_5678_9abc;
                plant.run(&mut p, n)
            })
            .collect()
    }

    /// A quiet machine like the one of the session 17 benchmark: the migration's presence
    /// alone takes the p99 to 1.2x the baseline (a level of 0.86: little headroom), flat up
    /// to a steep rise (1.5x at 32 MiB/s, 4x the start rate). From a cold start the rate
    /// reaches 70 % of that leftover within 6 windows in most runs and 12 in all (a 20 s
    /// rebalance spends most of its time near it), and settles with the p99 within 1.5x.
    #[test]
    fn from_a_cold_start_it_reaches_the_leftover_within_a_few_windows() {
        let leftover = 32.0 * MB as f64;
        let p99_us = |r: u64| BASE_US * (1.2 + 0.3 * (r as f64 / (32.0 * MB as f64)).powi(6));
        let runs = runs(p99_us, 48 * MB, 0.1, 40);
        let mut firsts: Vec<usize> = runs
            .iter()
            .map(|out| {
                let near = out.iter().position(|w| w.0 as f64 >= 0.7 * leftover);
                near.unwrap_or(usize::MAX)
            })
            .collect();
        firsts.sort();
        assert!(
            firsts[firsts.len() / 2] <= 6,
            "windows to the leftover: {firsts:?}"
        );
        assert!(
            *firsts.last().unwrap() <= 12,
            "windows to the leftover: {firsts:?}"
        );
        let late: Vec<(u64, f64)> = runs.iter().flat_map(|out| out[10..].to_vec()).collect();
        let (median, _, p99) = settled(&late);
        assert!(p99 <= 1.5 * BASE_US, "median p99 {:.2}x", p99 / BASE_US);
        assert!(
            median as f64 >= 0.7 * leftover,
            "median {} MB/s",
            median / MB
        );
    }

    /// A plant whose p99 rises steeply near its capacity (a queue: 1.5x at 40 MB/s, 2x at
    /// 45, unbounded at 50), noisy, half the runs with spikes: the fast growth overshoots
    /// the knee by one step at most and the cuts bring it back, without swinging wider.
    #[test]
    fn against_a_steep_knee_it_does_not_oscillate_beyond_a_band() {
        let p99_us = |r: u64| {
            let u = r as f64 / (50.0 * MB as f64);
            BASE_US * (1.0 + 0.1 / (1.0 - u).max(0.005)).min(20.0)
        };
        for (seed, out) in runs(p99_us, 150 * MB, 0.2, 300).iter().enumerate() {
            let late = &out[30..];
            let (median, lo, p99) = settled(late);
            let hi = late.iter().map(|w| w.0).max().unwrap();
            let far = late.iter().filter(|w| w.1 > 2.0 * BASE_US).count();
            let at = |r: u64| r / MB;
            assert!(hi < 50 * MB, "seed {seed}: up to saturation ({})", at(hi));
            assert!(lo >= 12 * MB, "seed {seed}: down to {} MB/s", at(lo));
            assert!(median >= 28 * MB, "seed {seed}: median {} MB/s", at(median));
            assert!(p99 <= 1.5 * BASE_US, "seed {seed}: median p99 {p99} us");
            assert!(far * 20 <= late.len(), "seed {seed}: {far} windows over 2x");
        }
    }

    /// Latency over the target whatever the rate (other processes' load): a cut that does
    /// not lower it is undone, so the migration is not starved for nothing; once the latency
    /// follows the rate again, the cuts go on.
    #[test]
    fn a_cut_that_does_not_help_is_undone() {
        let mut p = Pace::new(Settings {
            user_p99: Some(Duration::from_millis(10)),
            disk_await: None,
        });
        let start = p.begin((0, 0)).0;
        let mut rate = start;
        let mut verdicts = Vec::new();
        for _ in 0..60 {
            rate = p.step(busy(16, rate), (0, 0)).0;
            assert!(rate * 2 >= start, "starved: {rate}");
            verdicts.push(p.verdict);
        }
        let n = |v: Verdict| verdicts.iter().filter(|&&x| x == v).count();
        assert!(n(Verdict::Over) >= 2, "it still tries: {verdicts:?}");
        assert!(n(Verdict::Undone) >= 2, "{verdicts:?}");
        assert_eq!(rate, start, "ends where it began: {}", rate / MB);
        // the migration's own latency: 2 ms per MB/s
        for _ in 0..30 {
            rate = p.step(busy(2 * rate / MB, rate), (0, 0)).0;
        }
        assert!(rate <= 5 * MB, "cut under 10 ms: {} MB/s", rate / MB);
        assert!(rate >= 3 * MB, "not far under: {} MB/s", rate / MB);
    }

    /// An agent's share of the clients (50 requests a window): its p99 is its slowest
    /// request, over the target in two windows in a row by chance; three in a row cut.
    #[test]
    fn a_p99_of_few_requests_takes_three_windows_over_to_cut() {
        let few = |p99_ms: u64, bytes: u64| Sample {
            requests: 50,
            ..busy(p99_ms, bytes)
        };
        let mut p = Pace::new(Settings {
            user_p99: Some(Duration::from_millis(10)),
            disk_await: None,
        });
        let start = p.begin((0, 0)).0;
        assert_eq!(p.step(few(15, start), (0, 0)).0, start);
        assert_eq!(
            p.step(few(15, start), (0, 0)).0,
            start,
            "two slowest requests: held"
        );
        assert_eq!(p.verdict, Verdict::Hold);
        let cut = p.step(few(15, start), (0, 0)).0;
        assert!(cut < start, "three windows over: cut ({cut} of {start})");
        assert_eq!(p.verdict, Verdict::Over);
        // with enough requests for a p99, two windows over still cut
        let mut p = Pace::new(Settings {
            user_p99: Some(Duration::from_millis(10)),
            disk_await: None,
        });
        let start = p.begin((0, 0)).0;
        p.step(busy(15, start), (0, 0));
        assert!(
            p.step(busy(15, start), (0, 0)).0 < start,
            "500 requests: two windows cut"
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
