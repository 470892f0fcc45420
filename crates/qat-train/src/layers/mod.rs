//! QAT layers (paper §3, whitepaper §3.2.2).
