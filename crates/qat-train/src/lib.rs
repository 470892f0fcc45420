//! qat-train (content arrives with its issue).
