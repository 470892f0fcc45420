//! x86-64 micro-kernels (`std::arch` intrinsics behind `#[target_feature]`). Callers select
//! them only after [`crate::KernelPath::is_supported_here`] confirmed the CPU features.

pub mod avx2;
pub mod avx512vnni;
