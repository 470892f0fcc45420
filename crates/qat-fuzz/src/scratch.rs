//! A scratch directory per thread for the targets whose readers take paths (checkpoints, IDX,
//! CIFAR): each case writes its input there and reads it back through the real reader.

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
            *d = Some(
                tempfile::Builder::new()
                    .prefix("qat-fuzz-")
                    .tempdir()
                    .map_err(|e| format!("scratch directory: {e}"))?,
            );
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
