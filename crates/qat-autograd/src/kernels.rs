//! The one-pass CPU loops of fake quantization ([`fq_kernel`], [`fq_ste_kernel`]), compiled twice:
//! for the baseline x86-64 (SSE2) and with AVX-512 enabled, picked at run time from the CPU's
//! features. Both builds are the same Rust code with the same IEEE `f32` operations in the same
//! order (Rust never contracts `a·b + c` into a fused multiply-add), so they give the same bits; the
//! wider build only processes 16 lanes per instruction instead of 4.

/// Whether this CPU runs the AVX-512 builds of the loops (`avx512f`, checked once by the standard
/// library and cached).
#[inline]
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `$wide(args)` (an AVX-512 build) where the CPU has AVX-512F, else `$body(args)`; returns from the
/// enclosing function.
macro_rules! pick {
    ($wide:ident, $body:ident ($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            // SAFETY: the CPU has AVX-512F (checked just above), the only requirement of `$wide`.
            return unsafe { $wide($($arg),*) };
        }
        $body($($arg),*)
    }};
}

/// Defines `$name` as a dispatcher over two builds of the `#[inline(always)]` body `$body`: the
/// AVX-512 one where the CPU has it, else the baseline one.
macro_rules! dispatched {
    ($(#[$doc:meta])* $vis:vis $name:ident => $body:ident, $wide:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        $(#[$doc])*
        #[inline(never)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            pick!($wide, $body($($arg),*))
        }

        /// The AVX-512 build of the same body.
        ///
        /// # Safety
        /// The CPU must support AVX-512F.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn $wide($($arg: $ty),*) $(-> $ret)? {
            $body($($arg),*)
        }
    };
}

dispatched!(
    /// `os[i] = FQ(xs[i])` and the clipped-STE mask `ms[i]`; see [`fq_body`].
    pub(crate) fq_kernel => fq_body, fq_avx512(xs: &[f32], os: &mut [f32], ms: Option<&mut [f32]>, k: [f32; 4])
);

dispatched!(
    /// `bs[i] = FQ(clamp(xs[i], a, b)) − ms[i]·xs[i]` and the mask `ms[i]`; see [`fq_ste_body`].
    pub(crate) fq_ste_kernel => fq_ste_body, fq_ste_avx512(xs: &[f32], bs: &mut [f32], ms: &mut [f32], k: [f32; 6])
);

/// `(Σp, Σp²)` of one plane in f64, as [`plane_sums_body`] computes it (the AVX-512 build keeps its
/// eight accumulators in one register each, the same sums in the same order: the same bits). For
/// the batch statistics of a convolution's output (qat-train's batch-norm fold), where it is the
/// hot loop.
///
/// ```
/// assert_eq!(qat_autograd::plane_sums(&[1.0, -2.0, 3.0]), (2.0, 14.0));
/// ```
#[doc(hidden)]
#[inline(never)]
pub fn plane_sums(p: &[f32]) -> (f64, f64) {
    pick!(plane_sums_avx512, plane_sums_body(p))
}

/// [`plane_sums_body`] with its eight lanes in one `__m512d` per sum: lane `k` of `a` adds
/// `f64(p[8i + k])` and lane `k` of `b` adds its square (rounded, then added: no fused multiply-add),
/// in the order of the scalar loop; then the lanes in order and the tail, as there.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn plane_sums_avx512(p: &[f32]) -> (f64, f64) {
    use std::arch::x86_64::{
        _mm256_loadu_ps, _mm512_add_pd, _mm512_cvtps_pd, _mm512_mul_pd, _mm512_setzero_pd,
        _mm512_storeu_pd,
    };
    let chunks = p.chunks_exact(8);
    let rest = chunks.remainder();
    let (mut a, mut b) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    for ch in chunks {
        // SAFETY: `ch` holds exactly 8 f32 (chunks_exact), the 32 bytes this unaligned load reads.
        let v = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(ch.as_ptr()) });
        a = _mm512_add_pd(a, v);
        b = _mm512_add_pd(b, _mm512_mul_pd(v, v));
    }
    let (mut la, mut lb) = ([0f64; 8], [0f64; 8]);
    // SAFETY: each array has room for the 8 f64 stored.
    unsafe {
        _mm512_storeu_pd(la.as_mut_ptr(), a);
        _mm512_storeu_pd(lb.as_mut_ptr(), b);
    }
    finish_sums(&la, &lb, rest)
}

/// `(min, max, has NaN)` of `p` (`(+∞, −∞, false)` when empty); see [`min_max_body`]. Where a
/// value is NaN only the flag is specified (the bounds are then whatever the build found). For the
/// observers' batch ranges on the CPU.
///
/// ```
/// assert_eq!(qat_autograd::min_max(&[1.0, -2.0, 3.0]), (-2.0, 3.0, false));
/// assert!(qat_autograd::min_max(&[1.0, f32::NAN]).2);
/// ```
#[doc(hidden)]
#[inline(never)]
pub fn min_max(p: &[f32]) -> (f32, f32, bool) {
    pick!(min_max_avx512, min_max_body(p))
}

/// [`min_max_body`] with four independent 16-lane accumulators per bound (`vminps`/`vmaxps`), and
/// NaN flagged by an unordered compare; a minimum and a maximum are exact in any order.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn min_max_avx512(p: &[f32]) -> (f32, f32, bool) {
    use std::arch::x86_64::{
        _CMP_UNORD_Q, _mm512_cmp_ps_mask, _mm512_loadu_ps, _mm512_max_ps, _mm512_min_ps,
        _mm512_reduce_max_ps, _mm512_reduce_min_ps, _mm512_set1_ps,
    };
    let mut lo = [_mm512_set1_ps(f32::INFINITY); 4];
    let mut hi = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    let mut nan = 0u16;
    let chunks = p.chunks_exact(64);
    let rest = chunks.remainder();
    for ch in chunks {
        for k in 0..4 {
            // SAFETY: `ch` holds 64 f32 (chunks_exact); this reads the 16 from `16·k`.
            let v = unsafe { _mm512_loadu_ps(ch.as_ptr().add(16 * k)) };
            lo[k] = _mm512_min_ps(lo[k], v);
            hi[k] = _mm512_max_ps(hi[k], v);
            nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        }
    }
    let l = _mm512_min_ps(_mm512_min_ps(lo[0], lo[1]), _mm512_min_ps(lo[2], lo[3]));
    let h = _mm512_max_ps(_mm512_max_ps(hi[0], hi[1]), _mm512_max_ps(hi[2], hi[3]));
    min_max_fold(
        (_mm512_reduce_min_ps(l), _mm512_reduce_max_ps(h), nan != 0),
        rest,
    )
}

/// The baseline build: one pass of [`min_max_fold`]. A minimum and a maximum are exact in any
/// order, but for the sign of a zero result, which no parameter derived from the range depends on
/// (qat-core's `min(lo, 0)` and `|lo|` treat `−0` as `+0`).
#[inline(always)]
fn min_max_body(p: &[f32]) -> (f32, f32, bool) {
    min_max_fold((f32::INFINITY, f32::NEG_INFINITY, false), p)
}

/// `(min, max, has NaN)` of `acc` and the values of `p`; NaN is flagged (`v ≠ v`), not propagated.
#[inline(always)]
fn min_max_fold((mut l, mut h, mut n): (f32, f32, bool), p: &[f32]) -> (f32, f32, bool) {
    for &v in p {
        l = if v < l { v } else { l };
        h = if v > h { v } else { h };
        n |= v.is_nan();
    }
    (l, h, n)
}

/// `(Σp, Σp²)` in f64 with eight independent accumulators each (lane `k` takes the elements
/// `k, k + 8, …`; then the lanes in order, then the tail), so that the loop vectorizes and every
/// build sums in the same order.
#[inline(always)]
fn plane_sums_body(p: &[f32]) -> (f64, f64) {
    let mut a = [0f64; 8];
    let mut b = [0f64; 8];
    let chunks = p.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for k in 0..8 {
            let v = f64::from(ch[k]);
            a[k] += v;
            b[k] += v * v;
        }
    }
    finish_sums(&a, &b, rest)
}

/// The end of both builds of [`plane_sums`]: the eight lanes of each sum in order, then the tail.
#[inline(always)]
fn finish_sums(a: &[f64; 8], b: &[f64; 8], rest: &[f32]) -> (f64, f64) {
    let (mut sa, mut sb) = (a.iter().sum::<f64>(), b.iter().sum::<f64>());
    for &v in rest {
        let v = f64::from(v);
        sa += v;
        sb += v * v;
    }
    (sa, sb)
}

/// The code of one value in the one-pass kernels: `t = v·(1/S)` clamped to `[lo − 1, hi + 1]` (which
/// changes neither the clamped code nor the mask), rounded half to even by `(t + 1.5·2²³) − 1.5·2²³`
/// (exact for `|t| < 2²²`; it also turns `−0` into `+0`): returns the rounded `r`, the clamped
/// `c = clamp(r, lo, hi)` and whether `t` is NaN. Plain selects so that the callers' loops vectorize.
#[inline(always)]
fn code_of(v: f32, inv: f32, lo: f32, hi: f32) -> (f32, f32, bool) {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
    let t = v * inv;
    let u = if t > hi + 1.0 { hi + 1.0 } else { t };
    let u = if u < lo - 1.0 { lo - 1.0 } else { u };
    let r = (u + MAGIC) - MAGIC;
    let c = if r > hi { hi } else { r };
    let c = if c < lo { lo } else { c };
    (r, c, t.is_nan())
}

/// The loop of [`fq_ste_cpu`](crate::fake_quant::fq_ste_cpu), `k = [1/S, S, qmin − Z, qmax − Z, a, b]`: with `v = clamp(xs[i], a, b)`
/// (NaN stays NaN) and its code `c` (as [`fq_kernel`]), `ms[i] = [a < x < b ∧ c unclipped]` and
/// `bs[i] = FQ(v) − ms[i]·x` (computed as a select, so that a non-finite `x` never enters `bs`).
#[inline(always)]
fn fq_ste_body(xs: &[f32], bs: &mut [f32], ms: &mut [f32], k: [f32; 6]) {
    let [inv, scale, lo, hi, a, b] = k;
    let n = xs.len().min(bs.len()).min(ms.len());
    let (xs, bs, ms) = (&xs[..n], &mut bs[..n], &mut ms[..n]);
    for i in 0..n {
        let x = xs[i];
        let v = if x < a { a } else { x };
        let v = if v > b { b } else { v };
        let (r, c, nan) = code_of(v, inv, lo, hi);
        let fq = if nan { 0.0 } else { c * scale };
        // Branch-free (non-short-circuit `&`, bit masks) so that the loop vectorizes: the mask is
        // data-dependent and a branch on it mispredicts.
        let keep = (((x > a) & (x < b) & (c == r)) as u32).wrapping_neg();
        ms[i] = f32::from_bits(1.0f32.to_bits() & keep);
        bs[i] = fq - f32::from_bits(x.to_bits() & keep);
    }
}

/// The loop of [`fq_parts_cpu`](crate::fake_quant::fq_parts_cpu), `k = [1/S, S, qmin − Z, qmax − Z]`:
/// `os[i] = FQ(xs[i])`, `ms[i]` = clipped-STE mask. Plain `f32`
/// arguments and branch-free selects (comparisons are false for NaN, which takes the last select) so
/// that the loop vectorizes.
#[inline(always)]
fn fq_body(xs: &[f32], os: &mut [f32], ms: Option<&mut [f32]>, k: [f32; 4]) {
    let [inv, scale, lo, hi] = k;
    let n = xs.len().min(os.len());
    let (xs, os) = (&xs[..n], &mut os[..n]);
    let code = |v: f32| code_of(v, inv, lo, hi);
    match ms {
        Some(ms) => {
            let ms = &mut ms[..n];
            for i in 0..n {
                let (r, c, nan) = code(xs[i]);
                ms[i] = if nan || c == r { 1.0 } else { 0.0 };
                os[i] = if nan { 0.0 } else { c * scale };
            }
        }
        None => {
            for i in 0..n {
                let (_, c, nan) = code(xs[i]);
                os[i] = if nan { 0.0 } else { c * scale };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any f32 bit pattern (NaN, infinities, subnormals, ±0 included), and ordinary values.
    fn any_f32() -> impl Strategy<Value = f32> {
        prop_oneof![any::<u32>().prop_map(f32::from_bits), -300f32..300f32]
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    proptest! {
        // The dispatched loops (the AVX-512 build on CPUs that have it) against the baseline body,
        // bit for bit, on lengths that cover the vector width's tails.
        #[test]
        fn fq_kernel_builds_agree(
            xs in prop::collection::vec(any_f32(), 0..80),
            scale in 1e-4f32..10.0,
            z in -10i32..10,
        ) {
            let (inv, lo, hi) = (1.0 / scale, (-128 - z) as f32, (127 - z) as f32);
            let n = xs.len();
            let (mut o1, mut m1, mut o2, mut m2) = (vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            fq_kernel(&xs, &mut o1, Some(&mut m1), [inv, scale, lo, hi]);
            fq_body(&xs, &mut o2, Some(&mut m2), [inv, scale, lo, hi]);
            prop_assert!(same_bits(&o1, &o2) && same_bits(&m1, &m2));
            let k = [inv, scale, lo, hi, 0.0, 6.0];
            fq_ste_kernel(&xs, &mut o1, &mut m1, k);
            fq_ste_body(&xs, &mut o2, &mut m2, k);
            prop_assert!(same_bits(&o1, &o2) && same_bits(&m1, &m2));
        }

        #[test]
        fn plane_sums_builds_agree(p in prop::collection::vec(any_f32(), 0..100)) {
            // Bit for bit, except that a NaN's sign and payload may differ (x86 NaN propagation
            // depends on the operand order an instruction was given).
            let same = |x: f64, y: f64| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
            let (a1, b1) = plane_sums(&p);
            let (a2, b2) = plane_sums_body(&p);
            prop_assert!(same(a1, a2) && same(b1, b2), "{:?} vs {:?}", (a1, b1), (a2, b2));
        }
    }

    proptest! {
        #[test]
        fn min_max_builds_agree_and_match_iterators(p in prop::collection::vec(any_f32(), 0..200)) {
            let (l, h, n) = min_max(&p);
            let body = min_max_body(&p);
            prop_assert_eq!(n, body.2);
            prop_assert_eq!(n, p.iter().any(|v| v.is_nan()));
            if n {
                return Ok(()); // the bounds are unspecified with a NaN
            }
            prop_assert_eq!((l, h), (body.0, body.1));
            let finite = p.iter().filter(|v| !v.is_nan());
            prop_assert_eq!(l, finite.clone().copied().fold(f32::INFINITY, f32::min));
            prop_assert_eq!(h, finite.copied().fold(f32::NEG_INFINITY, f32::max));
        }
    }

    #[test]
    fn plane_sums_values() {
        let p: Vec<f32> = (1..=19).map(|i| i as f32).collect();
        assert_eq!(plane_sums(&p), (190.0, 2470.0));
    }
}
