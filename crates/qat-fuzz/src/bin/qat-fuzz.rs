//! `qat-fuzz [--cases N] [--seconds S] [--seed X] [--corpus DIR]`: runs a campaign with a
//! counting allocator, prints the report, writes every failing input into `DIR` (default
//! `tests/data/fuzz`) and exits non-zero if any case failed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use qat_fuzz::{Config, Meter, campaign, corpus_name};

/// Counts live bytes and their peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static BASE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let live = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

struct AllocMeter;

impl Meter for AllocMeter {
    fn reset(&self) {
        let live = LIVE.load(Ordering::Relaxed);
        BASE.store(live, Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
    }
    fn peak(&self) -> usize {
        PEAK.load(Ordering::Relaxed)
            .saturating_sub(BASE.load(Ordering::Relaxed))
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} needs a value")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = Config::default();
    let parsed = (|| -> Result<std::path::PathBuf, String> {
        if let Some(n) = arg(&args, "--cases")? {
            cfg.cases = n;
            cfg.seconds = f64::INFINITY;
        }
        if let Some(s) = arg::<f64>(&args, "--seconds")? {
            cfg.seconds = s;
            if arg::<u64>(&args, "--cases")?.is_none() {
                cfg.cases = u64::MAX;
            }
        }
        if let Some(s) = arg(&args, "--seed")? {
            cfg.seed = s;
        }
        Ok(arg(&args, "--corpus")?.unwrap_or_else(|| "tests/data/fuzz".into()))
    })();
    let corpus = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "qat-fuzz: {e}\nusage: qat-fuzz [--cases N] [--seconds S] [--seed X] [--corpus DIR]"
            );
            return ExitCode::FAILURE;
        }
    };
    let r = campaign(&cfg, Some(&AllocMeter));
    let count = |k| r.failures.iter().filter(|f| f.kind == k).count();
    println!(
        "qat-fuzz: seed {:#x}: {} cases in {:.1?} ({:.0}/s): {} accepted, {} rejected; panics {}, slow {}, memory {}, bugs {}; slowest case {:.1?} CPU time ({:.1?} wall time at most), largest case allocation peak {} bytes",
        cfg.seed,
        r.cases,
        r.elapsed,
        r.cases as f64 / r.elapsed.as_secs_f64().max(1e-9),
        r.accepted,
        r.rejected,
        count(qat_fuzz::FailureKind::Panic),
        count(qat_fuzz::FailureKind::Slow),
        count(qat_fuzz::FailureKind::Memory),
        count(qat_fuzz::FailureKind::Bug),
        r.slowest,
        r.slowest_wall,
        r.peak_bytes,
    );
    let per: Vec<String> = qat_fuzz::targets::Target::ALL
        .iter()
        .map(|&t| {
            let i = t as usize;
            format!(
                "{t:?} {} ({} accepted, {:.0} µs/case)",
                r.per_target[i],
                r.accepted_per_target[i],
                r.time_per_target[i].as_secs_f64() * 1e6 / r.per_target[i].max(1) as f64
            )
        })
        .collect();
    println!("  cases per target: {}", per.join(", "));
    #[cfg(feature = "torch")]
    qat_fuzz::scratch::remove();
    for f in &r.failures {
        let path = corpus.join(corpus_name(f.target, &f.input));
        println!(
            "  {:?} {:?}: {} -> {}",
            f.kind,
            f.target,
            f.message,
            path.display()
        );
        if let Err(e) =
            std::fs::create_dir_all(&corpus).and_then(|()| std::fs::write(&path, &f.input))
        {
            eprintln!("qat-fuzz: cannot write {}: {e}", path.display());
        }
    }
    if r.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
