//! The per-user cache shared by every checkout on a machine: libtorch, the peer runtimes and the
//! datasets of `cargo xtask setup`.

use std::{env, path::PathBuf};

use anyhow::{Context, Result};

/// The per-user cache: `$QAT_CACHE_DIR`, else `$XDG_CACHE_HOME/qat`, else `~/.cache/qat`.
///
/// ```
/// // A doc test is its own process: setting the variable affects nothing else.
/// unsafe { std::env::set_var("QAT_CACHE_DIR", "/tmp/qat-cache") };
/// assert_eq!(xtask::cache::cache_root()?, std::path::PathBuf::from("/tmp/qat-cache"));
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn cache_root() -> Result<PathBuf> {
    if let Some(d) = env::var_os("QAT_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("qat"));
    }
    let home =
        env::var_os("HOME").context("neither QAT_CACHE_DIR, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("qat"))
}
