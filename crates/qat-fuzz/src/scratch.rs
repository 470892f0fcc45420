//! A scratch directory per thread for the targets whose readers take paths (checkpoints, IDX,
//! CIFAR): each case writes its input there and reads it back through the real reader. It lives
//! in `/dev/shm` where that exists (memory-backed: a case then times the reader, not a busy disk,
//! where one small write took milliseconds), else in the system's temporary directory.

use std::cell::RefCell;
use std::path::PathBuf;

thread_local! {
    static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// This thread's scratch directory (created on first use).
pub fn dir() -> Result<PathBuf, String> {
    DIR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            let mut b = tempfile::Builder::new();
            b.prefix("qat-fuzz-");
            let shm = std::path::Path::new("/dev/shm");
            let t = if shm.is_dir() {
                b.tempdir_in(shm).or_else(|_| b.tempdir())
            } else {
                b.tempdir()
            };
            *d = Some(t.map_err(|e| format!("scratch directory: {e}"))?);
        }
        Ok(d.as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_default())
    })
}

/// Removes this thread's scratch directory (the next [`dir`] creates a new one).
pub fn remove() {
    DIR.with(|d| d.borrow_mut().take());
}
