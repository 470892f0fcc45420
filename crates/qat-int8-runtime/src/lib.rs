//! qat-int8-runtime (content arrives with its issue).
