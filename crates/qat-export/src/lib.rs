//! qat-export (content arrives with its issue).
