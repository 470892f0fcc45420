//! Cross-crate integration tests live in `tests/tests/*.rs`; this library is intentionally empty.
