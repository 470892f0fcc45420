//! x86-64 instruction sets (`std::arch` intrinsics behind `#[target_feature]`). The frame runs
//! them only after [`crate::KernelPath::is_supported_here`] confirmed the CPU features.

pub(crate) mod avx2;
pub(crate) mod avx512vnni;
