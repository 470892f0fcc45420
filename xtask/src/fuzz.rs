//! `cargo xtask fuzz [--cases N] [--seconds S] [--seed X] [--debug-build] [--no-torch]`: runs the
//! qat-fuzz campaign over every target: `.qat8`, FloatGraph JSON and bincode, configs, and (with
//! qat-fuzz's feature `torch`, which links the libtorch `cargo xtask setup` installs) checkpoints
//! and IDX/CIFAR files; `--no-torch` leaves those three out and needs no libtorch. Every failing
//! input is written into `tests/data/fuzz/`, where `cargo test -p qat-fuzz` replays it (with
//! `--features torch` for the libtorch targets); the command fails if any case failed.

use anyhow::Result;

use crate::{cargo, setup};

/// Fuzz options.
#[derive(clap::Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Number of cases (default: 10^5, or unbounded with --seconds).
    #[arg(long)]
    pub cases: Option<u64>,
    /// Wall-clock budget in seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// RNG seed (a campaign is a pure function of seed and case count).
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Build the fuzzer in the dev profile instead of release.
    #[arg(long)]
    pub debug_build: bool,
    /// Leave out the targets that need libtorch (checkpoints, IDX, CIFAR).
    #[arg(long)]
    pub no_torch: bool,
}

/// Runs the campaign described by `args`.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let mut cmd: Vec<String> = vec!["run".into()];
    if !args.debug_build {
        cmd.push("--release".into());
    }
    let libtorch = if args.no_torch {
        None
    } else {
        cmd.extend(["--features", "torch"].map(String::from));
        Some(setup::ensure_libtorch(true)?)
    };
    cmd.extend(["-p", "qat-fuzz", "--bin", "qat-fuzz", "--"].map(String::from));
    let cases = match (args.cases, args.seconds) {
        (None, None) => Some(100_000),
        (c, _) => c,
    };
    if let Some(n) = cases {
        cmd.extend(["--cases".into(), n.to_string()]);
    }
    if let Some(s) = args.seconds {
        cmd.extend(["--seconds".into(), s.to_string()]);
    }
    cmd.extend(["--seed".into(), args.seed.to_string()]);
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    cargo::run(libtorch.as_deref(), &refs)
}
