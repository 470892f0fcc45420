//! Child processes whose failure is an error that carries the child's own words (its stderr).

use std::process::{Command, ExitStatus, Output};

use anyhow::{Context, Result, bail};

/// Runs `cmd` to completion and returns its output when it exited with success. A failure to start
/// is `start_err()` (with the OS error as its cause); an unsuccessful exit is
/// `"{exit_err(status)}: {stderr}"` (stderr trimmed).
///
/// ```
/// use std::process::Command;
/// let out = xtask::process::output_ok(
///     Command::new("sh").args(["-c", "echo hi"]),
///     || "cannot run sh".to_string(),
///     |_| "sh failed".to_string(),
/// )?;
/// assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi");
/// let err = xtask::process::output_ok(
///     Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
///     || "cannot run sh".to_string(),
///     |status| format!("sh failed ({status})"),
/// )
/// .unwrap_err();
/// assert!(err.to_string().ends_with("): broken"), "{err}");
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn output_ok(
    cmd: &mut Command,
    start_err: impl FnOnce() -> String,
    exit_err: impl FnOnce(&ExitStatus) -> String,
) -> Result<Output> {
    let out = cmd.output().with_context(start_err)?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            exit_err(&out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
