//! The output stage's constants ([`Epilogue`]), where kernels write ([`OutPtr`]), and the ISA
//! trait that says which targets' output stages a kernel fuses ([`OutputStage`]).

use qat_core::fixed_point::{QuantizedMultiplier, Rounding};
use qat_core::target::{Target, requantize_real};

use super::LayerSpec;

/// Which targets' output stages an ISA's tiles apply themselves (in vector registers, or in a
/// scalar loop that calls qat-core, as the portable kernels do).
///
/// For any other target the frame runs the same tiles to int32 (`acc + bias'`) and requantizes
/// them with qat-core's scalar [`Target::requantize`], so a new [`Target`] (a new rounding mode)
/// is correct on every path before any ISA vectorizes it: vectorizing it is then one `true` in
/// the ISA's `fuses` and one arm in its output stage.
pub(crate) trait OutputStage {
    /// Whether the ISA's output stage handles `target` (each ISA's `requant.rs`).
    fn fuses(target: Target) -> bool;

    /// The constants of the ISA's single-shift GEMM output stage for `e` (its first `n` columns
    /// real), when the ISA has one and every real column admits it; by default none.
    fn single_shift(e: &Epilogue, n: usize) -> Option<SingleShift> {
        let _ = (e, n);
        None
    }
}

/// Per-column constants of an ISA's single-shift output stage (one rounding shift of the 64-bit
/// product `acc·M0` with `Z3` and the rounding folded into an added constant), in the ISA's lane
/// order; only meaningful for the [`Epilogue`] they were derived from.
#[derive(Debug, Clone)]
pub(crate) struct SingleShift {
    /// The added constants and shift counts.
    pub(crate) c: ShiftConstants,
    /// Whether the added constants also hold `bias'·M0` and the stage is the tie-free one
    /// ([`Epilogue::ties_impossible`]): the tiles then requantize the bare accumulators.
    pub(crate) folded: bool,
}

/// The constants of a single-shift stage for channels in an ISA's lane order, `k` and `s` the
/// same length (an ISA's layout of them: the AVX-512 `fused_constants`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ShiftConstants {
    /// The 64-bit added constants.
    pub(crate) k: Vec<i64>,
    /// The 32-bit shift counts.
    pub(crate) s: Vec<i32>,
}

/// What an ISA's output stage does with a rounding it does not fuse: nothing — the frame never
/// sends one (it requantizes through int32 when [`OutputStage::fuses`] is false).
#[cold]
pub(crate) fn not_fused(rounding: Rounding) -> ! {
    unreachable!("the frame requantizes {rounding} through int32: the ISA does not fuse it")
}

/// Where a kernel writes: requantized u8, or the raw int32 accumulators `acc + bias'`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OutPtr {
    /// uint8 output, row stride in elements.
    U8(*mut u8, usize),
    /// int32 accumulators, row stride in elements.
    I32(*mut i32, usize),
}

// SAFETY: tasks write disjoint row/column ranges of the same buffer (see `gemm::gemm`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The same output offset by `rows` rows and `cols` columns.
    ///
    /// # Safety
    /// The offset element must lie inside (or one past the end of) the buffer.
    pub(crate) unsafe fn offset(self, rows: usize, cols: usize) -> Self {
        // SAFETY: caller keeps the offset in bounds.
        unsafe {
            match self {
                OutPtr::U8(p, ld) => OutPtr::U8(p.add(rows * ld + cols), ld),
                OutPtr::I32(p, ld) => OutPtr::I32(p.add(rows * ld + cols), ld),
            }
        }
    }
}

/// Per-column output-stage constants: `q = clamp(round(M[n]·(acc + bias'[n])) + Z3, lo, hi)`,
/// as the layer's [`Target`] computes it (`tflite`: `apply`, `qat`: `apply_rounded_once`, `ort`
/// and `xnnpack`: the `f32` multiplier, ties to even), with `M[n] = (m0[n], shift)` split into `left = max(shift, 0)`,
/// `right = max(−shift, 0)`, and `bias'[n] = bias[n] − Z1·Σ_k w[k, n]` (the zero-point
/// correction of eq. 7–8 folded in).
///
/// Built only from a checked [`LayerSpec`]: every array holds the padded column count (a whole
/// number of panels), `0 ≤ lo ≤ hi ≤ 255` and `|Z3| < 2^23`, which the vector stages rely on.
#[derive(Debug, Clone)]
pub struct Epilogue {
    /// The target whose output stage this is ([`Target::requantize`], the scalar stage).
    pub(crate) target: Target,
    /// `target`'s fixed-point rounding, what the ISAs' vector stages apply when they fuse it
    /// (`Single` for an `f32` target, which no vector stage fuses: unused there).
    pub(crate) rounding: Rounding,
    /// `bias[n] − Z1·Σ_k B[k, n]`.
    pub(crate) bias: Vec<i32>,
    /// `M0[n]`.
    pub(crate) m0: Vec<i32>,
    /// `max(shift[n], 0)`.
    pub(crate) left: Vec<i32>,
    /// `max(−shift[n], 0)`.
    pub(crate) right: Vec<i32>,
    /// The multipliers as given (for the scalar stage).
    pub(crate) multipliers: Vec<QuantizedMultiplier>,
    /// `M[n]` as the `f32` the `f32` targets multiply by ([`QuantizedMultiplier::to_f32`],
    /// exact for their multipliers), for the ISAs' `f32` output stages.
    pub(crate) scale: Vec<f32>,
    /// `Z3`.
    pub(crate) zp: i32,
    /// Clamp low.
    pub(crate) lo: i32,
    /// Clamp high.
    pub(crate) hi: i32,
    /// Whether any column has `left > 0` (a multiplier ≥ 1); when not, vector stages skip the
    /// saturating pre-shift.
    pub(crate) any_left: bool,
    /// Whether any column with `M0 ≠ 0` has `shift ≥ 0` (a multiplier ≥ 0.5): single-rounding
    /// results may then exceed 2^30 and vector stages saturate them before narrowing.
    pub(crate) any_wide: bool,
    /// Whether the ISA's tiles apply this stage ([`OutputStage::fuses`]); when not, the frame
    /// runs them to int32 and calls [`Epilogue::requantize`].
    pub(crate) fused: bool,
    /// The ISA's single-shift form of this stage, when it has one that applies to every column
    /// ([`OutputStage::single_shift`]; only used when `fused`).
    pub(crate) single_shift: Option<Box<SingleShift>>,
    /// The `f64` scales of a layer that requantizes in `f64` ([`LayerSpec::reals`], one per
    /// padded column): the scalar stage is then qat-core's [`requantize_real`], never fused.
    pub(crate) reals: Option<Vec<f64>>,
    /// `|bias'[n]| + 255·Σ_k |w[k, n]|`: a bound on `|acc + bias'|` for any uint8 input (0 for
    /// padding columns).
    pub(crate) acc_bound: Vec<u64>,
}

impl Epilogue {
    /// Constants for `np ≥ n` (padded) columns of a checked `layer`, the first `n` real; padding
    /// columns repeat channel 0's multiplier and have a zero bias. `col_sums(c)` is
    /// `(Σ_k w[k, c], Σ_k |w[k, c]|)`.
    pub(crate) fn new(
        layer: &LayerSpec<'_>,
        n: usize,
        np: usize,
        col_sums: impl Fn(usize) -> (i32, u64),
        fused: bool,
    ) -> Self {
        let m = |c: usize| layer.multiplier(c);
        let mut e = Epilogue {
            target: layer.target,
            rounding: layer.target.rounding().unwrap_or(Rounding::Single),
            bias: vec![0; np],
            m0: vec![0; np],
            left: vec![0; np],
            right: vec![0; np],
            multipliers: vec![m(0); np],
            scale: vec![m(0).to_f32(); np],
            zp: layer.output_zero_point,
            lo: layer.lo,
            hi: layer.hi,
            any_left: false,
            any_wide: false,
            fused: fused && layer.reals.is_none(),
            single_shift: None,
            reals: layer.reals.map(|r| {
                let mut v = vec![r.first().copied().unwrap_or(0.0); np];
                v[..n].copy_from_slice(&r[..n]);
                v
            }),
            acc_bound: vec![0; np],
        };
        let z1 = layer.input_zero_point;
        for c in 0..n {
            let mc = m(c);
            let (sum, abs_sum) = col_sums(c);
            e.bias[c] = layer.bias[c].wrapping_sub(z1.wrapping_mul(sum));
            e.acc_bound[c] = (e.bias[c].unsigned_abs() as u64).saturating_add(255 * abs_sum);
            e.m0[c] = mc.multiplier();
            e.left[c] = mc.shift().max(0);
            e.right[c] = (-mc.shift()).max(0);
            e.multipliers[c] = mc;
            e.scale[c] = mc.to_f32();
        }
        e.any_left = e.left.iter().any(|&l| l > 0);
        e.any_wide = e.multipliers[..n]
            .iter()
            .any(|mc| mc.multiplier() != 0 && mc.shift() >= 0);
        e
    }

    /// Whether no accumulator of the first `n` columns can meet a tie of the single rounding, so
    /// that a vector stage may drop its negative-product correction (`Single` only; see the
    /// AVX-512 `requantize16_no_tie`).
    ///
    /// With `M0 = 2^a·m` (`m` odd) and `T = 31 + right`, the product `x·M0` is a tie
    /// (`≡ 2^(T−1) mod 2^T`) only when `x` is an odd multiple of `2^(T−1−a)`. Column `n` is safe
    /// when `M0 = 0` (the output is `Z3` for any `x`), or when `right ≥ 1`, no left shift, and
    /// [`Epilogue::acc_bound`] is below both `2^(T−1−a)` and `2^31` (so `acc + bias'` never
    /// wraps either, and `bias'` may be folded into the stage's constant). For example
    /// `M0 = 2^30` (`a = 30`) with `right = 1` makes `x = ±2` a tie (`x·M0 / 2^32 = ±0.5`).
    pub(crate) fn ties_impossible(&self, n: usize) -> bool {
        self.rounding == Rounding::Single
            && (0..n.min(self.m0.len())).all(|c| {
                let (m0, right) = (self.m0[c], self.right[c]);
                if m0 == 0 {
                    return true;
                }
                if self.left[c] != 0 || !(1..=32).contains(&right) || m0 < 0 {
                    return false;
                }
                let exp = (30 + right as u32 - m0.trailing_zeros()).min(31);
                self.acc_bound[c] < 1u64 << exp
            })
    }

    /// The scalar output stage of `v = acc + bias'[col]`: qat-core's [`Target::requantize`] in the
    /// layer's target, or [`requantize_real`] for a layer with `f64` scales.
    #[inline]
    pub(crate) fn requantize(&self, v: i32, col: usize) -> u8 {
        if let Some(reals) = &self.reals {
            return requantize_real(v, reals[col], self.zp, self.lo, self.hi) as u8;
        }
        self.target
            .requantize(v, self.multipliers[col], self.zp, self.lo, self.hi) as u8
    }

    /// The scalar output stage of an accumulator without the bias: `requantize(acc + bias'[col])`.
    #[inline]
    pub(crate) fn scalar(&self, acc: i32, col: usize) -> u8 {
        self.requantize(acc.wrapping_add(self.bias[col]), col)
    }
}
