//! `QAT_KERNEL` forces the kernel path (read once per process, so this file holds one test).

use qat_int8_runtime::KernelPath;

#[test]
fn qat_kernel_env_forces_the_path() {
    // SAFETY: the only test in this process; no other thread reads the environment yet.
    unsafe { std::env::set_var("QAT_KERNEL", "Portable") };
    assert_eq!(KernelPath::best(), KernelPath::Portable);
    assert_eq!(
        KernelPath::from_name("avx512vnni"),
        Some(KernelPath::Avx512Vnni)
    );
    assert_eq!(KernelPath::from_name("sse9"), None);
    assert!(KernelPath::Reference.is_supported_here() && KernelPath::Portable.is_supported_here());
    for p in KernelPath::ALL {
        assert_eq!(KernelPath::from_name(&p.name().to_uppercase()), Some(p));
    }
    assert!(KernelPath::optimized().all(|p| p != KernelPath::Reference && p.is_supported_here()));
}
