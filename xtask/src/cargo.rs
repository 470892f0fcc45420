//! Running child `cargo` commands with libtorch configured.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// A `cargo` command with `LIBTORCH` set to `libtorch` (and nothing that would make torch-sys
/// look elsewhere), so every child build links the same libtorch and torch-sys is not rebuilt.
/// `None` leaves the environment as it is (for crates without libtorch).
pub fn command(libtorch: Option<&Path>, args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.args(args);
    if let Some(dir) = libtorch {
        cmd.env("LIBTORCH", dir).env_remove("LIBTORCH_USE_PYTORCH");
    }
    if let Some(root) = workspace_root() {
        cmd.current_dir(root);
    }
    cmd
}

/// Runs `cargo args…` and fails with the command line if it fails.
pub fn run(libtorch: Option<&Path>, args: &[&str]) -> Result<()> {
    run_env(libtorch, &[], args)
}

/// [`run`] with extra environment variables for the child (and the processes it starts: test
/// binaries inherit them).
pub fn run_env(libtorch: Option<&Path>, env: &[(&str, &OsStr)], args: &[&str]) -> Result<()> {
    eprintln!("[xtask] cargo {}", args.join(" "));
    let status = command(libtorch, args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot start cargo {}", args.join(" ")))?;
    if !status.success() {
        // A linker that runs out of disk fails with a one-line reason buried under its pages-long
        // command line: say how much room the build had, so a full disk is told from a real error.
        let room = disk_note().map(|n| format!("; {n}")).unwrap_or_default();
        bail!("`cargo {}` failed ({status}){room}", args.join(" "));
    }
    Ok(())
}

/// "`N` MiB free on the file system of `target/`" (from `df -Pk`), or `None` where `df` cannot
/// tell.
pub fn disk_note() -> Option<String> {
    let root = workspace_root()?;
    let target = root.join("target");
    let dir = if target.exists() { target } else { root };
    let out = Command::new("df").arg("-Pk").arg(&dir).output().ok()?;
    let kib = parse_df_available_kib(&String::from_utf8_lossy(&out.stdout))?;
    Some(format!(
        "{} MiB free on the file system of {}",
        kib / 1024,
        dir.display()
    ))
}

/// The "Available" column (KiB) of the one file system in POSIX `df -Pk` output.
fn parse_df_available_kib(out: &str) -> Option<u64> {
    out.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// A smoke run of one of xtask's own binaries: `cargo run -p xtask --features torch --bin BIN --
/// ARGS… --out DIR` in the dev profile, with `env` added, where `DIR` is `target/<dir>/smoke`,
/// cleared first. Returns `DIR`.
pub fn run_smoke_bin(
    libtorch: &Path,
    env: &[(&str, &OsStr)],
    bin: &str,
    dir: &str,
    args: &[&str],
) -> Result<PathBuf> {
    let root = workspace_root().context("no workspace root")?;
    let out = root.join("target").join(dir).join("smoke");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    let out_s = out.to_string_lossy().to_string();
    let mut all = vec![
        "run",
        "-p",
        "xtask",
        "--features",
        "torch",
        "--bin",
        bin,
        "--",
    ];
    all.extend_from_slice(args);
    all.extend(["--out", &out_s]);
    run_env(Some(libtorch), env, &all)?;
    Ok(out)
}

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::parse_df_available_kib;

    #[test]
    fn df_available_column_is_read() {
        let out = "Filesystem 1024-blocks Used Available Capacity Mounted on\n\
                   /dev/vda 264091120 84989400 10418404 90% /\n";
        assert_eq!(parse_df_available_kib(out), Some(10_418_404));
        assert_eq!(parse_df_available_kib("Filesystem\n"), None);
        assert_eq!(parse_df_available_kib("h\n/dev/vda 1 2 many 3% /\n"), None);
    }
}
