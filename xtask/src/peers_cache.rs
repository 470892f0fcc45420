//! Where the peer runtimes' venv (onnxruntime, LiteRT) lives, without installing it: the pinned
//! requirements, the cache key, and the lookup that the pipeline uses to decide whether it can run
//! its exported models in their own runtimes. `cargo xtask setup` installs the venv.

use std::path::PathBuf;

use crate::cache::cache_root;

/// The pinned requirements (every package, dependencies included).
pub const REQUIREMENTS: &str = include_str!("../py/peers-requirements.txt");

/// The pinned version of `pip_name` in [`REQUIREMENTS`].
///
/// ```
/// assert!(xtask::peers_cache::pinned("onnxruntime").is_some());
/// assert_eq!(xtask::peers_cache::pinned("nonexistent"), None);
/// ```
pub fn pinned(pip_name: &str) -> Option<&'static str> {
    REQUIREMENTS.lines().find_map(|l| {
        let (name, version) = l.trim().split_once("==")?;
        (name.trim().eq_ignore_ascii_case(pip_name)).then(|| version.trim())
    })
}

/// The cache key: the two runtimes' versions (for people) and an FNV-1a 64 hash of the whole
/// requirements file (for every pin; stable across Rust versions, unlike `Hash`).
pub fn key() -> String {
    let h = REQUIREMENTS.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "ort{}-litert{}-{h:016x}",
        pinned("onnxruntime").unwrap_or("?"),
        pinned("ai-edge-litert").unwrap_or("?")
    )
}

/// The peers' Python if it is available without installing anything: `QAT_PEERS_PYTHON` (an
/// existing file), else the cached venv of `cargo xtask setup` (`peers-<key>/READY`). Nothing is
/// verified here; a Python that cannot import the runtimes fails when it runs.
pub fn find_python() -> Option<PathBuf> {
    if let Some(user) = std::env::var_os("QAT_PEERS_PYTHON") {
        let p = PathBuf::from(user);
        return p.exists().then_some(p);
    }
    let ready = cache_root()
        .ok()?
        .join(format!("peers-{}", key()))
        .join("READY");
    let python = PathBuf::from(std::fs::read_to_string(ready).ok()?.trim());
    python.exists().then_some(python)
}
