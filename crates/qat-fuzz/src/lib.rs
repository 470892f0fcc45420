//! # qat-fuzz — a deterministic, structure-aware mutation fuzzer on stable Rust
//!
//! Feeds mutated inputs to the user-facing readers and everything behind them (see
//! [`targets::Target`]): `.qat8` bytes through `Int8Model::from_bytes_with`, validation and
//! `Executor::run` on every kernel path this CPU has; FloatGraph JSON and bincode through
//! validation, the interpreter, calibration, export and a run of the exported model; pipeline
//! configurations through their parser and validation ([`config`]); with feature `torch`,
//! checkpoints through `qat_train::checkpoint::load` and IDX/CIFAR files through qat-train's
//! readers (`checkpoint`, `datafile`; they link libtorch, which the default build does not).
//!
//! Inputs start from [`seeds::all`] and from earlier mutants that were accepted. Each case
//! applies byte-level mutations ([`mutate::bytes`]: bit flips, boundary values, varint length
//! edits, truncation, splicing; for `.qat8` the header's length and CRC are usually fixed up so
//! the mutation reaches the decoder) or a structure-aware one ([`structure`]: decode, edit one
//! field, encode). A case fails when it panics (caught with `catch_unwind`), when it takes longer
//! than the per-case bound, when the allocation peak (measured by a [`Meter`], the binary's
//! counting allocator) exceeds the memory bound, or when an exported model does not load back.
//! The run is a pure function of its seed and case count.

#[cfg(feature = "torch")]
pub mod checkpoint;
pub mod config;
#[cfg(feature = "torch")]
pub mod datafile;
pub mod mutate;
pub mod rng;
#[cfg(feature = "torch")]
pub mod scratch;
pub mod seeds;
pub mod structure;
pub mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rng::Rng;
use targets::{BUG, Target};

/// Measures the allocation peak of a case (the binary installs a counting allocator).
pub trait Meter {
    /// Starts a case: the peak restarts from the bytes allocated now.
    fn reset(&self);
    /// Largest number of bytes allocated at once since [`Meter::reset`], above the level then.
    fn peak(&self) -> usize;
}

/// Campaign settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Number of cases (the run also stops at `seconds`).
    pub cases: u64,
    /// Wall-clock budget.
    pub seconds: f64,
    /// RNG seed.
    pub seed: u64,
    /// A case that costs more CPU time than this (the whole process's, every thread) is a
    /// failure. CPU time, not wall time: a case that waits for a busy machine has not done more
    /// work, and the bound is on the work an input can cause.
    pub slow: Duration,
    /// A case that takes longer than this in wall-clock time is a failure too (a hang: a case
    /// that waits without working never reaches [`Config::slow`]).
    pub hang: Duration,
    /// A case whose allocation peak exceeds this is a failure (only with a [`Meter`]).
    pub max_case_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cases: 10_000,
            seconds: f64::INFINITY,
            seed: 0x5EED,
            slow: Duration::from_secs(2),
            hang: Duration::from_secs(60),
            max_case_bytes: 256 << 20,
        }
    }
}

/// How a case failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// It panicked.
    Panic,
    /// It cost more CPU time than [`Config::slow`], or more wall time than [`Config::hang`].
    Slow,
    /// It allocated more than [`Config::max_case_bytes`] at once.
    Memory,
    /// It hit a defect the code reports ([`targets::BUG`]).
    Bug,
}

/// One failing input.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Its target.
    pub target: Target,
    /// How it failed.
    pub kind: FailureKind,
    /// The panic message, time or size.
    pub message: String,
    /// The input.
    pub input: Vec<u8>,
}

/// What a campaign did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Cases run.
    pub cases: u64,
    /// Cases whose input was accepted and ran to the end.
    pub accepted: u64,
    /// Cases rejected with a typed error.
    pub rejected: u64,
    /// Cases per target (indexed by `Target as usize`).
    pub per_target: [u64; Target::COUNT],
    /// Accepted cases per target.
    pub accepted_per_target: [u64; Target::COUNT],
    /// Time spent in the cases of each target.
    pub time_per_target: [Duration; Target::COUNT],
    /// Largest CPU time of a case (what [`Config::slow`] bounds).
    pub slowest: Duration,
    /// Largest wall-clock time of a case (what [`Config::hang`] bounds).
    pub slowest_wall: Duration,
    /// Largest allocation peak of a case (with a [`Meter`]).
    pub peak_bytes: usize,
    /// Every failure.
    pub failures: Vec<Failure>,
    /// Wall time.
    pub elapsed: Duration,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Accepted and ran.
    Accepted,
    /// Rejected with a typed error (the message).
    Rejected(String),
    /// Failed.
    Failed(FailureKind, String),
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// CPU time used so far by this process, all threads together (`CLOCK_PROCESS_CPUTIME_ID`);
/// `None` where the platform has no such clock (the bound then falls back to wall time).
///
/// ```
/// let a = qat_fuzz::process_cpu_time();
/// let mut x = 0u64;
/// for i in 0..1_000_000u64 {
///     x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
/// }
/// std::hint::black_box(x);
/// if let (Some(a), Some(b)) = (a, qat_fuzz::process_cpu_time()) {
///     assert!(b >= a);
/// }
/// ```
pub fn process_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the call writes only into it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        if rc == 0 {
            return Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
        }
        None
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Runs one case under `catch_unwind`, timing it and (with a meter) measuring its allocation.
/// Returns the outcome, the case's CPU time (wall time where the platform has no CPU clock),
/// its wall time and its allocation peak.
pub fn run_case(
    cfg: &Config,
    meter: Option<&dyn Meter>,
    rng: &mut Rng,
    target: Target,
    input: &[u8],
) -> (Outcome, Duration, Duration, usize) {
    if let Some(m) = meter {
        m.reset();
    }
    let c0 = process_cpu_time();
    let t0 = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| targets::run(rng, target, input)));
    let wall = t0.elapsed();
    let cpu = match (c0, process_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => wall,
    };
    let peak = meter.map_or(0, |m| m.peak());
    let outcome = match r {
        Err(p) => Outcome::Failed(FailureKind::Panic, panic_message(&*p)),
        Ok(_) if cpu > cfg.slow || wall > cfg.hang => Outcome::Failed(
            FailureKind::Slow,
            format!("{cpu:?} CPU time, {wall:?} wall time"),
        ),
        Ok(_) if peak > cfg.max_case_bytes => {
            Outcome::Failed(FailureKind::Memory, format!("{peak} bytes"))
        }
        Ok(Err(e)) if e.starts_with(BUG) => Outcome::Failed(FailureKind::Bug, e),
        Ok(Err(e)) => Outcome::Rejected(e),
        Ok(Ok(())) => Outcome::Accepted,
    };
    (outcome, cpu, wall, peak)
}

/// The mutant inputs of one case.
fn mutant(rng: &mut Rng, target: Target, base: &[u8], other: &[u8]) -> Vec<u8> {
    if rng.one_in(2) {
        let s = match target {
            Target::Qat8 => structure::qat8(rng, base),
            Target::GraphJson => std::str::from_utf8(base)
                .ok()
                .and_then(|s| qat_export::FloatGraph::from_json(s).ok())
                .and_then(|g| structure::graph(rng, &g, true)),
            Target::GraphBincode => qat_export::FloatGraph::from_bincode(base)
                .ok()
                .and_then(|g| structure::graph(rng, &g, false)),
            Target::Config => config::mutate(rng, base),
            #[cfg(feature = "torch")]
            Target::Checkpoint => Some(checkpoint::mutate(rng, base, other)),
            #[cfg(feature = "torch")]
            Target::Idx => Some(datafile::mutate(rng, false, base, other)),
            #[cfg(feature = "torch")]
            Target::Cifar => Some(datafile::mutate(rng, true, base, other)),
            #[cfg(not(feature = "torch"))]
            Target::Checkpoint | Target::Idx | Target::Cifar => None,
        };
        if let Some(s) = s {
            if rng.one_in(4) {
                let mut s = s;
                mutate::bytes(rng, &mut s, other);
                if target == Target::Qat8 && !rng.one_in(8) {
                    structure::fix_header(&mut s);
                }
                return s;
            }
            return s;
        }
    }
    let mut v = base.to_vec();
    mutate::bytes(rng, &mut v, other);
    if target == Target::Qat8 && !rng.one_in(8) {
        structure::fix_header(&mut v);
    }
    v
}

/// Most inputs kept per target for further mutation.
const POOL: usize = 256;

/// Runs a campaign (see the [crate docs](crate)). Panics inside cases are caught; the default
/// panic hook is silenced for the duration and restored after.
pub fn campaign(cfg: &Config, meter: Option<&dyn Meter>) -> Report {
    let mut pools: Vec<Vec<Vec<u8>>> = vec![Vec::new(); Target::COUNT];
    for (t, b) in seeds::all() {
        pools[t as usize].push(b);
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::new(cfg.seed);
    let mut report = Report::default();
    let t0 = Instant::now();
    while report.cases < cfg.cases && t0.elapsed().as_secs_f64() < cfg.seconds {
        // `.qat8` twice as often as each other target.
        let k = rng.below(Target::ALL.len() + 1);
        let target = Target::ALL.get(k).copied().unwrap_or(Target::Qat8);
        let pool = &pools[target as usize];
        if pool.is_empty() {
            report.cases += 1;
            continue;
        }
        let base = pool[rng.below(pool.len())].clone();
        let other = pool[rng.below(pool.len())].clone();
        // Structure-aware mutation decodes the base with the code under test: a panic there is
        // a finding too (reported with the base as input).
        let input = match catch_unwind(AssertUnwindSafe(|| mutant(&mut rng, target, &base, &other)))
        {
            Ok(input) => input,
            Err(p) => {
                report.cases += 1;
                report.failures.push(Failure {
                    target,
                    kind: FailureKind::Panic,
                    message: format!("while decoding for mutation: {}", panic_message(&*p)),
                    input: base,
                });
                continue;
            }
        };
        let (outcome, cpu, wall, peak) = run_case(cfg, meter, &mut rng, target, &input);
        report.cases += 1;
        report.per_target[target as usize] += 1;
        report.time_per_target[target as usize] += wall;
        report.slowest = report.slowest.max(cpu);
        report.slowest_wall = report.slowest_wall.max(wall);
        report.peak_bytes = report.peak_bytes.max(peak);
        match outcome {
            Outcome::Accepted => {
                report.accepted += 1;
                report.accepted_per_target[target as usize] += 1;
                let pool = &mut pools[target as usize];
                if pool.len() < POOL {
                    pool.push(input);
                } else {
                    let i = rng.below(POOL);
                    pool[i] = input;
                }
            }
            Outcome::Rejected(_) => report.rejected += 1,
            Outcome::Failed(kind, message) => report.failures.push(Failure {
                target,
                kind,
                message,
                input,
            }),
        }
    }
    report.elapsed = t0.elapsed();
    std::panic::set_hook(hook);
    report
}

/// A stable file name for a corpus entry: FNV-1a of the bytes, and the target's extension.
///
/// ```
/// use qat_fuzz::{corpus_name, targets::Target};
/// assert!(corpus_name(Target::Qat8, b"abc").ends_with(".qat8"));
/// ```
pub fn corpus_name(target: Target, input: &[u8]) -> String {
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    });
    format!("{h:016x}.{}", target.extension())
}
