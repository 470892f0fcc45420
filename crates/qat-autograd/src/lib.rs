//! qat-autograd (content arrives with its issue).
