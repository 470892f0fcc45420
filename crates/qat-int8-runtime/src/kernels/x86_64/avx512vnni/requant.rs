//! The AVX-512 output stage: fixed-point requantization of 16 int32 lanes, bit-exact with
//! qat-core — `Gemmlowp` (`requantize16`, with or without the saturating left pre-shift),
//! `Single` (`requantize16_single`, narrow or wide), the single-shift stage of the depthwise
//! kernels and of GEMM layers that admit it (`requantize16_fused`, either rounding), and its
//! tie-free `Single` form for layers whose accumulators cannot reach a tie
//! (`requantize16_no_tie`, bias folded into the constant for the GEMM).
//!
//! A new rounding: add its 16-lane stage here, its arms in `variant`/`stage16` (and, if it has
//! one, in the fused constants), and a `true` in `fuses`; until then the frame requantizes it
//! through int32 with qat-core.

use std::arch::x86_64::*;

use qat_core::fixed_point::Rounding;
use qat_core::target::Target;

use super::Avx512Vnni;
use crate::kernels::frame::epilogue::{ShiftConstants, SingleShift, not_fused};
use crate::kernels::frame::{Epilogue, OutputStage};

impl OutputStage for Avx512Vnni {
    fn fuses(target: Target) -> bool {
        matches!(target, Target::Tflite | Target::Qat)
    }

    /// [`requantize16_fused`]'s constants in natural column order, when [`fused_ok`] holds for
    /// every real column.
    fn single_shift(e: &Epilogue, n: usize) -> Option<SingleShift> {
        let rounding_ok = matches!(e.rounding, Rounding::Gemmlowp | Rounding::Single);
        let n = n.min(e.m0.len());
        let ok = e.fused
            && rounding_ok
            && e.m0.len().is_multiple_of(16)
            && fused_ok(&e.m0[..n], &e.left[..n], &e.right[..n], e.zp, e.lo, e.hi);
        ok.then(|| {
            let mut c = fused_constants(&e.m0, &e.right, e.zp, e.rounding);
            let folded = e.ties_impossible(n);
            if folded {
                fold_bias(&mut c.k, &e.m0, &e.bias);
            }
            SingleShift { c, folded }
        })
    }
}

/// The output-stage variant for `e`: `(SLOW, SINGLE)` of [`stage16`]. `SLOW` asks for the
/// saturating pre-shift (`Gemmlowp`, some multiplier ≥ 1) or the capped wide form (`Single`,
/// some multiplier ≥ 0.5). A rounding this stage does not fuse only ever gets int32 output
/// (`u8_out` false), which every variant computes alike.
#[inline]
pub(super) fn variant(e: &Epilogue, u8_out: bool) -> (bool, bool) {
    match e.rounding {
        Rounding::Gemmlowp => (e.any_left, false),
        Rounding::Single => (e.any_wide, true),
        #[allow(unreachable_patterns)]
        r => {
            if u8_out {
                not_fused(r)
            }
            (false, false)
        }
    }
}

/// Per-lane multiplier constants for [`requantize16`], derived once per 16 columns/channels and
/// kept in registers across rows/pixels.
#[derive(Clone, Copy)]
pub struct Rq16 {
    m0: __m512i,
    /// `M0` of the odd lanes moved to the low half of each 64-bit lane.
    m0_hi: __m512i,
    left: __m512i,
    right: __m512i,
    /// `2^right − 1`.
    rmask: __m512i,
    /// `(2^right − 1) >> 1`.
    rhalf: __m512i,
}

/// 16 lanes of each of `M0`, `left`, `right`.
///
/// # Safety
/// CPU supports avx512f; each pointer has 16 readable `i32`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_lanes(
    m0: *const i32,
    left: *const i32,
    right: *const i32,
) -> (__m512i, __m512i, __m512i) {
    // SAFETY: caller guarantees 16 readable lanes each.
    unsafe {
        (
            _mm512_loadu_si512(m0.cast()),
            _mm512_loadu_si512(left.cast()),
            _mm512_loadu_si512(right.cast()),
        )
    }
}

impl Rq16 {
    /// Loads `M0`, `left`, `right` for 16 lanes and derives the rest.
    ///
    /// # Safety
    /// CPU supports avx512f; each pointer has 16 readable `i32`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn load(m0: *const i32, left: *const i32, right: *const i32) -> Self {
        // SAFETY: caller guarantees 16 readable lanes each.
        let (m0, left, right) = unsafe { load_lanes(m0, left, right) };
        let one = _mm512_set1_epi32(1);
        let rmask = _mm512_sub_epi32(_mm512_sllv_epi32(one, right), one);
        Self {
            m0,
            m0_hi: _mm512_srli_epi64::<32>(m0),
            left,
            right,
            rmask,
            rhalf: _mm512_srli_epi32::<1>(rmask),
        }
    }
}

/// gemmlowp's `MultiplyByQuantizedMultiplier` + `Z3` + clamp on 16 int32 lanes, bit-exact with
/// [`qat_core::fixed_point::requantize`]:
/// 1. `x·2^left` saturating (overflow detected by shifting back);
/// 2. SRDHM: `(x·M0 + 2^30) >> 31` in 64-bit lanes — for `M0 ≥ 0` this equals gemmlowp's
///    sign-dependent nudge with truncating division, and `M0 ≠ i32::MIN` so it never saturates;
/// 3. rounding divide by `2^right`: `(x >> e) + ((x & mask) > (mask >> 1) + (x < 0))`;
/// 4. `+ Z3`, clamp to `[lo, hi]`.
///
/// `LEFT = false` skips step 1 (valid when every lane's `left` is 0, the usual case `M < 1`).
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn requantize16<const LEFT: bool>(
    x: __m512i,
    c: &Rq16,
    zp: __m512i,
    lo: __m512i,
    hi: __m512i,
) -> __m512i {
    let x = if LEFT {
        let shifted = _mm512_sllv_epi32(x, c.left);
        let overflow = _mm512_cmpneq_epi32_mask(_mm512_srav_epi32(shifted, c.left), x);
        let negative = _mm512_cmplt_epi32_mask(x, _mm512_setzero_si512());
        let sat = _mm512_mask_blend_epi32(
            negative,
            _mm512_set1_epi32(i32::MAX),
            _mm512_set1_epi32(i32::MIN),
        );
        _mm512_mask_blend_epi32(overflow, shifted, sat)
    } else {
        x
    };
    let nudge = _mm512_set1_epi64(1 << 30);
    let even = _mm512_srli_epi64::<31>(_mm512_add_epi64(_mm512_mul_epi32(x, c.m0), nudge));
    let odd = _mm512_slli_epi64::<1>(_mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), c.m0_hi),
        nudge,
    ));
    let high = _mm512_mask_blend_epi32(0xAAAA, even, odd);
    let rem = _mm512_and_si512(high, c.rmask);
    let threshold = _mm512_add_epi32(c.rhalf, _mm512_srli_epi32::<31>(high));
    let q = _mm512_srav_epi32(high, c.right);
    let q = _mm512_mask_add_epi32(
        q,
        _mm512_cmpgt_epi32_mask(rem, threshold),
        q,
        _mm512_set1_epi32(1),
    );
    _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, zp), lo), hi)
}

/// Per-lane constants of [`requantize16_single`] for 16 lanes, derived once per 16
/// columns/channels from `M0`, `left`, `right` (`T = 31 − shift = 31 + right − left`).
#[derive(Clone, Copy)]
pub struct RqSingle16 {
    m0: __m512i,
    /// `M0` of the odd lanes moved to the low half of each 64-bit lane.
    m0_hi: __m512i,
    /// 64-bit `T` of the even lanes (`T = 32` for a flushed `M0 = 0`).
    t_even: __m512i,
    /// 64-bit `T` of the odd lanes.
    t_odd: __m512i,
    /// `T − 32` of the odd lanes (their result read from the high half when every `T ≥ 32`).
    s_odd: __m512i,
    /// `2^(T−1)` of the even lanes.
    h_even: __m512i,
    /// `2^(T−1)` of the odd lanes.
    h_odd: __m512i,
}

impl RqSingle16 {
    /// Loads `M0`, `left`, `right` for 16 lanes and derives the shift counts and rounding halves.
    ///
    /// # Safety
    /// CPU supports avx512f; each pointer has 16 readable `i32`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn load(m0: *const i32, left: *const i32, right: *const i32) -> Self {
        // SAFETY: caller guarantees 16 readable lanes each.
        let (m0, left, right) = unsafe { load_lanes(m0, left, right) };
        let t = _mm512_sub_epi32(_mm512_add_epi32(_mm512_set1_epi32(31), right), left);
        let flushed = _mm512_cmpeq_epi32_mask(m0, _mm512_setzero_si512());
        let t = _mm512_mask_mov_epi32(t, flushed, _mm512_set1_epi32(32));
        let t_even = _mm512_and_si512(t, _mm512_set1_epi64(0xFFFF_FFFF));
        let t_odd = _mm512_srli_epi64::<32>(t);
        let one = _mm512_set1_epi64(1);
        Self {
            m0,
            m0_hi: _mm512_srli_epi64::<32>(m0),
            t_even,
            t_odd,
            s_odd: _mm512_sub_epi64(t_odd, _mm512_set1_epi64(32)),
            h_even: _mm512_sllv_epi64(one, _mm512_sub_epi64(t_even, one)),
            h_odd: _mm512_sllv_epi64(one, _mm512_sub_epi64(t_odd, one)),
        }
    }
}

/// The single-rounding output stage ([`Rounding::Single`]) on 16 int32 lanes, bit-exact with
/// [`qat_core::fixed_point::requantize_single`]: with `T = 31 − shift ∈ [1, 62]`,
/// `r = sign(x)·⌊(|x|·M0 + 2^(T−1)) / 2^T⌋` (`vpabsd`, unsigned `vpmuludq` — `|i32::MIN| = 2^31`
/// is exact as an unsigned lane — and a logical 64-bit shift of a non-negative product below
/// 2^63), then `+ Z3` and the clamp.
///
/// `WIDE = false` requires every lane's `T ≥ 32` (no multiplier ≥ 0.5): `|r| < 2^30`, and the odd
/// lanes' result is read from the high half of a shift by `T − 32`. `WIDE = true` handles any
/// `T`: `|r|` is capped at 2^24 before narrowing, which changes nothing after the clamp to
/// `[lo, hi] ⊆ [0, 255]` with `|Z3| < 2^23` (the reference saturates there too).
/// Per 16 lanes (`WIDE = false`): 14 ops, against 17 for [`requantize16`].
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn requantize16_single<const WIDE: bool>(
    x: __m512i,
    c: &RqSingle16,
    zp: __m512i,
    lo: __m512i,
    hi: __m512i,
) -> __m512i {
    let zero = _mm512_setzero_si512();
    let negative = _mm512_cmplt_epi32_mask(x, zero);
    let ax = _mm512_abs_epi32(x);
    let te = _mm512_add_epi64(_mm512_mul_epu32(ax, c.m0), c.h_even);
    let to = _mm512_add_epi64(
        _mm512_mul_epu32(_mm512_srli_epi64::<32>(ax), c.m0_hi),
        c.h_odd,
    );
    let r = if WIDE {
        let cap = _mm512_set1_epi64(1 << 24);
        let re = _mm512_min_epu64(_mm512_srlv_epi64(te, c.t_even), cap);
        let ro = _mm512_min_epu64(_mm512_srlv_epi64(to, c.t_odd), cap);
        _mm512_mask_blend_epi32(0xAAAA, re, _mm512_slli_epi64::<32>(ro))
    } else {
        _mm512_mask_blend_epi32(
            0xAAAA,
            _mm512_srlv_epi64(te, c.t_even),
            _mm512_srlv_epi64(to, c.s_odd),
        )
    };
    let r = _mm512_mask_sub_epi32(r, negative, zero, r);
    _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(r, zp), lo), hi)
}

/// The constants of either output stage for 16 lanes: the unused mode's half is zero (`SINGLE`
/// picks, at compile time, which one [`stage16`] applies).
#[derive(Clone, Copy)]
pub struct Stage16 {
    g: Rq16,
    s: RqSingle16,
}

impl Stage16 {
    /// [`Rq16::load`] (`SINGLE = false`) or [`RqSingle16::load`] (`SINGLE = true`).
    ///
    /// # Safety
    /// CPU supports avx512f; each pointer has 16 readable `i32`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn load<const SINGLE: bool>(
        m0: *const i32,
        left: *const i32,
        right: *const i32,
    ) -> Self {
        let z = _mm512_setzero_si512();
        // SAFETY: as documented.
        unsafe {
            if SINGLE {
                Self {
                    g: Rq16 {
                        m0: z,
                        m0_hi: z,
                        left: z,
                        right: z,
                        rmask: z,
                        rhalf: z,
                    },
                    s: RqSingle16::load(m0, left, right),
                }
            } else {
                Self {
                    g: Rq16::load(m0, left, right),
                    s: RqSingle16 {
                        m0: z,
                        m0_hi: z,
                        t_even: z,
                        t_odd: z,
                        s_odd: z,
                        h_even: z,
                        h_odd: z,
                    },
                }
            }
        }
    }

    /// [`Stage16::load`] of lanes `at..at + 16`: `m0[at..]`, `left[at..]`, `right[at..]`. Always
    /// inlined, without target features of its own: it compiles as part of the kernel calling it.
    ///
    /// # Safety
    /// CPU supports avx512f; `m0`, `left` and `right` have at least `at + 16` entries each.
    #[inline(always)]
    pub unsafe fn load_at<const SINGLE: bool>(
        m0: &[i32],
        left: &[i32],
        right: &[i32],
        at: usize,
    ) -> Self {
        debug_assert!(m0.len() >= at + 16 && left.len() >= at + 16 && right.len() >= at + 16);
        // SAFETY: caller guarantees the lengths.
        unsafe {
            Self::load::<SINGLE>(
                m0.as_ptr().add(at),
                left.as_ptr().add(at),
                right.as_ptr().add(at),
            )
        }
    }
}

/// The output stage of 16 lanes in the mode chosen at compile time: [`requantize16`] with
/// `LEFT = SLOW` (`SINGLE = false`) or [`requantize16_single`] with `WIDE = SLOW`
/// (`SINGLE = true`); `SLOW` and `SINGLE` come from [`variant`].
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn stage16<const SLOW: bool, const SINGLE: bool>(
    x: __m512i,
    c: &Stage16,
    zp: __m512i,
    lo: __m512i,
    hi: __m512i,
) -> __m512i {
    if SINGLE {
        requantize16_single::<SLOW>(x, &c.s, zp, lo, hi)
    } else {
        requantize16::<SLOW>(x, &c.g, zp, lo, hi)
    }
}

/// Per-lane constants of the single-shift output stage ([`requantize16_fused`]) for 16 lanes: the
/// even int32 lanes are handled in the 64-bit lanes' low halves, the odd lanes in their high halves.
#[derive(Clone, Copy)]
pub struct RqFused16 {
    m0: __m512i,
    /// `M0` of the odd lanes moved to the low half of each 64-bit lane.
    m0_hi: __m512i,
    /// 64-bit rounding constants `K` of the even lanes (see [`fused_constants`]).
    k_even: __m512i,
    /// Same for the odd lanes.
    k_odd: __m512i,
    /// 32-bit shift counts `right − 1` of the 16 lanes in lane order: each lane's result is its
    /// 64-bit sum's high half shifted right by that much ([`high_halves_shifted`]).
    s32: __m512i,
    /// What a negative product subtracts: `2^31` (`Gemmlowp`) or 1 (`Single`).
    neg: __m512i,
}

impl RqFused16 {
    /// Loads 16 lanes' `M0` and the 16 `i64` rounding constants and 16 shift counts laid out by
    /// [`fused_constants`] for `rounding`.
    ///
    /// # Safety
    /// CPU supports avx512f; `m0` and `s` have 16 readable `i32` each, `k` 16 readable `i64`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn load(m0: *const i32, k: *const i64, s: *const i32, rounding: Rounding) -> Self {
        // SAFETY: caller guarantees the readable lengths.
        unsafe {
            let m0 = _mm512_loadu_si512(m0.cast());
            Self {
                m0,
                m0_hi: _mm512_srli_epi64::<32>(m0),
                k_even: _mm512_loadu_si512(k.cast()),
                k_odd: _mm512_loadu_si512(k.add(8).cast()),
                s32: _mm512_loadu_si512(s.cast()),
                neg: _mm512_set1_epi64(match rounding {
                    Rounding::Gemmlowp => 1 << 31,
                    Rounding::Single => 1,
                    #[allow(unreachable_patterns)]
                    r => not_fused(r),
                }),
            }
        }
    }

    /// [`RqFused16::load`] of lanes `at..at + 16`: `m0[at..]`, `c.k[at..]`, `c.s[at..]`. Always
    /// inlined, without target features of its own: it compiles as part of the kernel calling it.
    ///
    /// # Safety
    /// CPU supports avx512f; `m0`, `c.k` and `c.s` have at least `at + 16` entries each.
    #[inline(always)]
    pub(crate) unsafe fn load_at(
        m0: &[i32],
        c: &ShiftConstants,
        at: usize,
        rounding: Rounding,
    ) -> Self {
        let (k, s) = (&c.k, &c.s);
        debug_assert!(m0.len() >= at + 16 && k.len() >= at + 16 && s.len() >= at + 16);
        // SAFETY: caller guarantees the lengths.
        unsafe {
            Self::load(
                m0.as_ptr().add(at),
                k.as_ptr().add(at),
                s.as_ptr().add(at),
                rounding,
            )
        }
    }
}

/// Whether every real channel admits the single-shift output stage (either rounding): no left shift
/// (`shift ≤ 0`), `1 ≤ right ≤ 21` (or a flushed multiplier `M0 = 0`), `|Z3| < 2^9` and a clamp range
/// inside `[0, 255]` (so saturating packs equal the reference's clamp and `as u8`).
pub fn fused_ok(m0: &[i32], left: &[i32], right: &[i32], zp: i32, lo: i32, hi: i32) -> bool {
    (0..=255).contains(&lo)
        && (lo..=255).contains(&hi)
        && zp.unsigned_abs() < 1 << 9
        && m0
            .iter()
            .zip(left)
            .zip(right)
            .all(|((&m, &l), &r)| l == 0 && (m == 0 || (1..=21).contains(&r)))
}

/// The constants of [`requantize16_fused`] for channels taken 16 at a time in the given order
/// (`m0.len()` a multiple of 16): per group of 16 lanes, `k` holds the 8 even lanes' then the 8
/// odd lanes' `K = 2^30 + 2^(30+e) + Z3·2^(31+e)` (`Gemmlowp`) or `K = 2^(30+e) + Z3·2^(31+e)`
/// (`Single`: `2^(T−1) + Z3·2^T` with `T = 31 + e`), and `s` the 16 lanes' final shift counts
/// `e − 1` in lane order, with `e = right` (`e = 1` for a flushed `M0 = 0`, whose output is `Z3`
/// for any `e`). Only meaningful when [`fused_ok`] holds.
pub(crate) fn fused_constants(
    m0: &[i32],
    right: &[i32],
    zp: i32,
    rounding: Rounding,
) -> ShiftConstants {
    let srdhm_nudge = match rounding {
        Rounding::Gemmlowp => 1i64 << 30,
        Rounding::Single => 0,
        // No fused stage for other roundings (`DepthwiseVnniLayout::fused` is false): unused.
        #[allow(unreachable_patterns)]
        _ => 0,
    };
    let mut k = vec![0i64; m0.len()];
    let mut s = vec![0i32; m0.len()];
    for g in 0..m0.len() / 16 {
        for lane in 0..16 {
            let ch = g * 16 + lane;
            let e = if m0[ch] == 0 {
                1
            } else {
                right[ch].clamp(1, 21)
            } as i64;
            let slot = g * 16 + (lane % 2) * 8 + lane / 2;
            k[slot] = srdhm_nudge + (1i64 << (30 + e)) + (zp as i64) * (1i64 << (31 + e));
            s[ch] = (e - 1) as i32;
        }
    }
    ShiftConstants { k, s }
}

/// [`requantize16`] without the clamp, computed with one rounding shift: bit-exact with
/// `qat_core::fixed_point::requantize(x, M, Z3, i32::MIN, i32::MAX)` when [`fused_ok`] holds.
///
/// With `P = x·M0` (64-bit, `M0 ≥ 0`) and `e = right ≥ 1`, gemmlowp's SRDHM is
/// `h = ⌊(P + 2^30) / 2^31⌋` (its sign-dependent nudge with truncation equals this floor) and the
/// rounding divide is `⌊(h + 2^(e−1) − [h < 0]) / 2^e⌋`. Since `⌊(⌊y⌋ + c) / d⌋ = ⌊(y + c) / d⌋` for
/// integers `c`, `d > 0`, both collapse to `⌊(P + 2^30 + 2^(30+e) − [h<0]·2^31) / 2^(31+e)⌋`, and
/// `[h < 0]` may be replaced by `[P < 0]`: for `P ∈ [−2^30, 0)` both forms give 0 when `e ≥ 1`.
/// `Z3` is folded into the constant as `Z3·2^(31+e)` (no overflow: `|P| < 2^62`, `e ≤ 21`).
/// Per 16 lanes: one shift, two `vpmuldq`, two compares, two adds, two masked subtracts, a
/// masked shuffle and a variable 32-bit shift (11 ops against ≈ 17 for [`requantize16`] with its
/// clamp).
///
/// [`Rounding::Single`] (`requantize_single`, ties away from zero) is the same instruction
/// sequence with other constants: with `T = 31 + e`, `sign(P)·⌊(|P| + 2^(T−1)) / 2^T⌋` equals
/// `⌊(P + 2^(T−1) − [P < 0]) / 2^T⌋` (for `P < 0`, `−⌊(−P + h)/d⌋ = ⌊(P + h − 1)/d⌋` when
/// `d = 2h`), so `K = 2^(T−1) + Z3·2^T` and a negative product subtracts 1 instead of `2^31`.
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn requantize16_fused(x: __m512i, c: &RqFused16) -> __m512i {
    let zero = _mm512_setzero_si512();
    let pe = _mm512_mul_epi32(x, c.m0);
    let po = _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), c.m0_hi);
    let te = _mm512_add_epi64(pe, c.k_even);
    let te = _mm512_mask_sub_epi64(te, _mm512_cmplt_epi64_mask(pe, zero), te, c.neg);
    let to = _mm512_add_epi64(po, c.k_odd);
    let to = _mm512_mask_sub_epi64(to, _mm512_cmplt_epi64_mask(po, zero), to, c.neg);
    high_halves_shifted(te, to, c)
}

/// `⌊t / 2^(31+e)⌋` per lane from the 64-bit sums `te` (even lanes) and `to` (odd lanes): with
/// `T = 31 + e ≥ 32`, `⌊t / 2^T⌋ = ⌊⌊t / 2^32⌋ / 2^(T−32)⌋`, and `⌊t / 2^32⌋` is the high half of
/// `t` — already in the odd lane's place for `to`, moved down by one masked dword shuffle for
/// `te` — so one 32-bit variable shift by `e − 1` finishes all 16 lanes (instead of two 64-bit
/// shifts and a blend). The results fit in 32 bits: `|t| < 2^62`.
#[inline(always)]
fn high_halves_shifted(te: __m512i, to: __m512i, c: &RqFused16) -> __m512i {
    // SAFETY: only inlined into this module's AVX-512 functions (their target features hold).
    unsafe {
        let hi = _mm512_mask_shuffle_epi32::<_MM_PERM_DDBB>(to, 0x5555, te);
        _mm512_srav_epi32(hi, c.s32)
    }
}

/// Adds `bias'[ch]·M0[ch]` to each channel's [`fused_constants`] slot (same lane order), so that
/// [`requantize16_no_tie`] of the bare accumulator `acc` computes the stage of `acc + bias'`:
/// `(acc + bias')·M0 + K = acc·M0 + (K + bias'·M0)`. Only meaningful where
/// [`Epilogue::ties_impossible`] holds (no `i32` wrap of `acc + bias'`, no tie).
pub fn fold_bias(k: &mut [i64], m0: &[i32], bias: &[i32]) {
    for (ch, (&m, &b)) in m0.iter().zip(bias).enumerate() {
        let (g, lane) = (ch / 16, ch % 16);
        let slot = g * 16 + (lane % 2) * 8 + lane / 2;
        k[slot] = k[slot].wrapping_add(b as i64 * m as i64);
    }
}

/// [`requantize16_fused`] in [`Rounding::Single`] without its negative-product correction, for
/// accumulators that cannot produce a tie: `⌊(P + K) / 2^T⌋` with `P = x·M0`, `T = 31 + e`.
///
/// The correction `− [P < 0]` of the single rounding changes the result only at a tie,
/// `P ≡ 2^(T−1) (mod 2^T)`. With `a` trailing zero bits in `M0 = 2^a·m` (`m` odd), that needs `x`
/// to be an odd multiple of `2^(T−1−a)`; an accumulator with `|x| < 2^(T−1−a)` never is, and
/// [`Epilogue::ties_impossible`] proves that bound per layer from its weights and bias. Then
/// `P + K` is the whole stage: two `vpmuldq`, one shift, two adds, a masked shuffle and a
/// variable shift (7 ops against 11). With `K` from [`fold_bias`], `x` is the bare accumulator.
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn requantize16_no_tie(x: __m512i, c: &RqFused16) -> __m512i {
    let te = _mm512_add_epi64(_mm512_mul_epi32(x, c.m0), c.k_even);
    let to = _mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), c.m0_hi),
        c.k_odd,
    );
    high_halves_shifted(te, to, c)
}

/// The single-shift stage of 16 accumulators (bias included) as a layer's plan chose it:
/// [`requantize16_no_tie`] when `NT` (no accumulator can meet a tie), else [`requantize16_fused`].
/// Always inlined, without target features of its own: it compiles as part of the AVX-512 kernel
/// calling it.
#[inline(always)]
pub(super) fn single_shift_stage<const NT: bool>(acc: __m512i, f: &RqFused16) -> __m512i {
    // SAFETY: only inlined into this module's AVX-512 kernels (their target features hold).
    unsafe {
        if NT {
            requantize16_no_tie(acc, f)
        } else {
            requantize16_fused(acc, f)
        }
    }
}
