//! The packed u8×i8 GEMM frame: `C[m, n] = requantize(bias'[n] + Σ_k A[m, k]·B[k, n])` (in the
//! model's [`Rounding`]).
//!
//! `A` is uint8 activations (rows = output pixels, im2col'd for k×k convs), `B` the int8 weights
//! (column `n` = output channel; OHWI rows are exactly `B`'s columns). With symmetric weights
//! (`Z2 = 0`) the paper's eq. 7–8 reduce to `Σ (q1 − Z1)·q2 = Σ q1·q2 − Z1·a2[n]` with the
//! column sum `a2[n] = Σ_k B[k, n]`, so the zero-point correction is folded into the bias once,
//! at pack time: `bias'[n] = bias[n] − Z1·a2[n]`. The core loop is then a plain u8×i8 dot product,
//! and the epilogue (fixed-point multiplier, `+ Z3`, clamp, narrow to u8) runs on the
//! accumulator tile while it is still in registers.
//!
//! Packed layouts (padding columns and the K tail are zero, so they add nothing):
//! - AVX-512 VNNI: panels of [`NR`] = 64 columns; inside a panel, for each group of four `k`,
//!   64 × 4 bytes `[n][k mod 4]` (the operand layout of `vpdpbusd`).
//! - portable: panels of 64 columns, k-major `[k][n]` (contiguous inner loop the compiler
//!   vectorizes).
//! - AVX2: panels of [`NR_AVX2`] = 16 columns; for each pair of `k`, 16 × 2 int16 (`vpmaddwd`
//!   operands). Widening to int16 avoids `vpmaddubsw`'s int16 saturation (255·127·2 > 2^15).
//!
//! Tolerance policy (STYLE.md 4): int32 accumulators and uint8 outputs are bit-exact against
//! [`super::reference`](mod@super::reference) for every path (wrapping int32 makes every summation order equal).

use qat_core::fixed_point::{QuantizedMultiplier, Rounding, requantize_with};
use rayon::prelude::*;

use super::KernelPath;

/// Columns per packed panel (portable, AVX-512 VNNI): four zmm registers of 16 int32.
pub const NR: usize = 64;
/// Columns per packed panel on AVX2: two ymm registers of 8 int32.
pub const NR_AVX2: usize = 16;
/// Rows per micro-tile (all paths).
pub const MR: usize = 6;
/// Rows per parallel task (a multiple of [`MR`]).
pub const MC: usize = 96;

/// Rounds `x` up to a multiple of `m`.
#[inline]
pub fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Weights packed for one path, with per-column epilogue constants.
#[derive(Debug, Clone)]
pub struct PackedB {
    path: KernelPath,
    /// Columns (output channels).
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// `k` rounded up to the path's k-group (4 for i8 panels, 2 for i16 panels).
    pub kp: usize,
    nr: usize,
    i8_panels: Vec<i8>,
    i16_panels: Vec<i16>,
    /// Epilogue constants, padded to a whole number of panels.
    pub epi: Epilogue,
}

/// Per-column epilogue constants: `q = clamp(round(M[n]·(acc + bias[n])) + Z3, lo, hi)`, the
/// rounding being the model's [`Rounding`] (`Gemmlowp`: `apply`, `Single`: `apply_rounded_once`),
/// with `M[n] = (m0[n], shift)` split into `left = max(shift, 0)`, `right = max(−shift, 0)`.
#[derive(Debug, Clone)]
pub struct Epilogue {
    /// How `M·acc` is rounded (the model's [`Rounding`]).
    pub rounding: Rounding,
    /// `bias[n] − Z1·Σ_k B[k, n]` (zero-point correction folded in).
    pub bias: Vec<i32>,
    /// `M0[n]`.
    pub m0: Vec<i32>,
    /// `max(shift[n], 0)`.
    pub left: Vec<i32>,
    /// `max(−shift[n], 0)`.
    pub right: Vec<i32>,
    /// The multipliers as given (for the scalar epilogue).
    pub multipliers: Vec<QuantizedMultiplier>,
    /// `Z3`.
    pub zp: i32,
    /// Clamp low.
    pub lo: i32,
    /// Clamp high.
    pub hi: i32,
    /// Whether any column has `left > 0` (a multiplier ≥ 1); when not, SIMD epilogues skip the
    /// saturating pre-shift.
    pub any_left: bool,
    /// Whether any column with `M0 ≠ 0` has `shift ≥ 0` (a multiplier ≥ 0.5): single-rounding
    /// results may then exceed 2^30 and SIMD epilogues saturate them before narrowing.
    pub any_wide: bool,
}

impl Epilogue {
    /// Constants for `np` (padded) columns, the first `n` real with multipliers `m(c)` and a zero
    /// bias (the caller folds its zero-point-corrected bias in); padding columns repeat `m(0)`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        np: usize,
        n: usize,
        m: impl Fn(usize) -> QuantizedMultiplier,
        zp: i32,
        lo: i32,
        hi: i32,
        rounding: Rounding,
    ) -> Self {
        let mut e = Epilogue {
            rounding,
            bias: vec![0; np],
            m0: vec![0; np],
            left: vec![0; np],
            right: vec![0; np],
            multipliers: vec![m(0); np],
            zp,
            lo,
            hi,
            any_left: false,
            any_wide: false,
        };
        for c in 0..n {
            let mc = m(c);
            e.m0[c] = mc.multiplier();
            e.left[c] = mc.shift().max(0);
            e.right[c] = (-mc.shift()).max(0);
            e.multipliers[c] = mc;
        }
        e.any_left = e.left.iter().any(|&l| l > 0);
        e.any_wide = e.multipliers[..n]
            .iter()
            .any(|mc| mc.multiplier() != 0 && mc.shift() >= 0);
        e
    }

    /// Whether the SIMD epilogues need their slow variant: a left pre-shift (`Gemmlowp`) or
    /// results beyond 2^30 (`Single`).
    pub fn slow(&self) -> bool {
        match self.rounding {
            Rounding::Gemmlowp => self.any_left,
            Rounding::Single => self.any_wide,
        }
    }
}

impl PackedB {
    /// Packs `n` columns of length `k` given as `w[col·k + kk]` (OHWI rows), with the per-column
    /// bias and multipliers (one shared or one per column), input zero point `z1` and output
    /// stage `(z3, lo, hi)` rounded as `rounding` says.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: KernelPath,
        w: &[i8],
        n: usize,
        k: usize,
        bias: &[i32],
        multipliers: &[QuantizedMultiplier],
        z1: i32,
        z3: i32,
        lo: i32,
        hi: i32,
        rounding: Rounding,
    ) -> Self {
        let (nr, kg) = match path {
            KernelPath::Avx2 => (NR_AVX2, 2),
            _ => (NR, 4),
        };
        let kp = round_up(k.max(1), kg);
        let np = round_up(n.max(1), nr);
        let mut i8_panels = Vec::new();
        let mut i16_panels = Vec::new();
        if path == KernelPath::Avx2 {
            i16_panels = vec![0i16; np * kp];
            for col in 0..n {
                let (p, c) = (col / nr, col % nr);
                for kk in 0..k {
                    i16_panels[p * kp * nr + (kk / 2) * nr * 2 + c * 2 + kk % 2] =
                        w[col * k + kk] as i16;
                }
            }
        } else if path == KernelPath::Avx512Vnni {
            i8_panels = vec![0i8; np * kp];
            for col in 0..n {
                let (p, c) = (col / nr, col % nr);
                for kk in 0..k {
                    i8_panels[p * kp * nr + (kk / 4) * nr * 4 + c * 4 + kk % 4] = w[col * k + kk];
                }
            }
        } else {
            // Portable: k-major `[k][64]`, so the inner loop over 64 columns is contiguous and
            // the compiler vectorizes it for whatever SIMD the target has.
            i8_panels = vec![0i8; np * kp];
            for col in 0..n {
                let (p, c) = (col / nr, col % nr);
                for kk in 0..k {
                    i8_panels[p * kp * nr + kk * nr + c] = w[col * k + kk];
                }
            }
        }
        let m = |c: usize| {
            if multipliers.len() == 1 {
                multipliers[0]
            } else {
                multipliers[c]
            }
        };
        let mut epi = Epilogue::new(np, n, m, z3, lo, hi, rounding);
        for c in 0..n {
            let col_sum = w[c * k..(c + 1) * k]
                .iter()
                .fold(0i32, |s, &v| s.wrapping_add(v as i32));
            epi.bias[c] = bias[c].wrapping_sub(z1.wrapping_mul(col_sum));
        }
        Self {
            path,
            n,
            k,
            kp,
            nr,
            i8_panels,
            i16_panels,
            epi,
        }
    }

    /// The path the panels are laid out for.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// Columns per panel.
    pub fn nr(&self) -> usize {
        self.nr
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }
}

/// Where a GEMM writes: requantized u8, or the raw int32 accumulators `acc + bias'` (tests).
#[derive(Clone, Copy)]
pub enum OutPtr {
    /// uint8 output, row stride in elements.
    U8(*mut u8, usize),
    /// int32 accumulators, row stride in elements.
    I32(*mut i32, usize),
}

// SAFETY: tasks write disjoint row/column ranges of the same buffer (see `gemm`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The same output offset by `rows` rows and `cols` columns.
    ///
    /// # Safety
    /// The offset must stay inside the buffer.
    pub unsafe fn offset(self, rows: usize, cols: usize) -> Self {
        // SAFETY: caller keeps the offset in bounds.
        unsafe {
            match self {
                OutPtr::U8(p, ld) => OutPtr::U8(p.add(rows * ld + cols), ld),
                OutPtr::I32(p, ld) => OutPtr::I32(p.add(rows * ld + cols), ld),
            }
        }
    }
}

/// Source rows of `A`: either direct (rows of `lda ≥ kp` bytes, K tail readable and multiplied by
/// zero weights) or filled on demand into per-task scratch (im2col, channel slices).
pub enum ASource<'a> {
    /// `A` in memory, `rows·lda` bytes, with `lda ≥ kp`.
    Direct {
        /// The bytes.
        data: &'a [u8],
        /// Row stride.
        lda: usize,
    },
    /// `fill(row0, rows, dst)` writes `rows` rows of `kp` bytes (zero past `k`) into `dst`.
    Fill(&'a (dyn Fn(usize, usize, &mut [u8]) + Sync)),
    /// Implicit im2col (indirection): row `r` of `A` is `taps` segments of `seg` bytes, segment
    /// `t` starting at `ptrs[r·taps + t]` as written by `fill_ptrs(row0, rows, ptrs)`. Requires
    /// `seg % 4 == 0` and `taps·seg == kp`. The VNNI kernel reads the segments in place; other
    /// paths copy them into a row block first.
    Indirect {
        /// Segments per row (kernel taps).
        taps: usize,
        /// Bytes per segment (input channels).
        seg: usize,
        /// Writes the segment pointers of rows `row0..row0 + rows`; every pointer must have `seg`
        /// readable bytes for the duration of the GEMM.
        fill_ptrs: &'a (dyn Fn(usize, usize, &mut [*const u8]) + Sync),
    },
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<i16>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    static POINTERS: std::cell::RefCell<Vec<*const u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `C[m × n] = epilogue(A[m × k] · B[k × n])` on `b.path()`, parallel over row blocks of [`MC`]
/// (and over column panels when `m` is small). Each output element is computed by the same
/// micro-kernel code whatever the split, so the result is identical for any thread count.
///
/// # Safety
/// `out` must be valid for `m` rows of `b.n` columns at its stride, not aliased by `a`.
pub unsafe fn gemm(m: usize, a: &ASource<'_>, b: &PackedB, out: OutPtr) {
    if m == 0 || b.n == 0 {
        return;
    }
    let row_blocks = m.div_ceil(MC);
    let panels = b.panels();
    // Few rows (FC, GEMV): split the columns too so every thread has work.
    let threads = rayon::current_num_threads();
    let col_blocks = if row_blocks >= 2 * threads {
        1
    } else {
        panels.min((2 * threads).div_ceil(row_blocks)).max(1)
    };
    let panels_per_block = panels.div_ceil(col_blocks);
    let tasks = row_blocks * col_blocks;
    let run = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let row0 = rb * MC;
        let rows = MC.min(m - row0);
        let p0 = cb * panels_per_block;
        let p1 = (p0 + panels_per_block).min(panels);
        if p0 >= p1 {
            return;
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let (bytes, words) = &mut *s;
            let (a_ptr, lda): (*const u8, usize) = match a {
                ASource::Direct { data, lda } => (data[row0 * lda..].as_ptr(), *lda),
                ASource::Fill(fill) => {
                    bytes.resize(MC * b.kp, 0);
                    fill(row0, rows, &mut bytes[..rows * b.kp]);
                    (bytes.as_ptr(), b.kp)
                }
                ASource::Indirect {
                    taps,
                    seg,
                    fill_ptrs,
                } => {
                    let done = POINTERS.with(|pt| {
                        let mut pt = pt.borrow_mut();
                        pt.resize(MC * taps, std::ptr::null());
                        fill_ptrs(row0, rows, &mut pt[..rows * taps]);
                        #[cfg(target_arch = "x86_64")]
                        if b.path == KernelPath::Avx512Vnni {
                            // SAFETY: VNNI supported (path chosen at pack time); every pointer has
                            // `seg` readable bytes (caller); out covers m × n.
                            unsafe {
                                super::x86_64::avx512vnni::gemm_block_indirect(
                                    b,
                                    &b.i8_panels,
                                    &pt[..rows * taps],
                                    *taps,
                                    *seg,
                                    rows,
                                    p0,
                                    p1,
                                    out.offset(row0, 0),
                                )
                            };
                            return true;
                        }
                        // Other paths: gather the segments into a row block.
                        bytes.resize(MC * b.kp, 0);
                        for r in 0..rows {
                            for t in 0..*taps {
                                // SAFETY: every pointer has `seg` readable bytes (caller).
                                let src =
                                    unsafe { std::slice::from_raw_parts(pt[r * taps + t], *seg) };
                                bytes[r * b.kp + t * seg..r * b.kp + (t + 1) * seg]
                                    .copy_from_slice(src);
                            }
                        }
                        false
                    });
                    if done {
                        return;
                    }
                    (bytes.as_ptr(), b.kp)
                }
            };
            // SAFETY: rows × lda bytes are readable at a_ptr; out covers m × n (caller).
            unsafe { block(b, a_ptr, lda, rows, p0, p1, out.offset(row0, 0), words) };
        });
    };
    if tasks == 1 {
        run(0);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// One task: `rows ≤ MC` rows of A against panels `p0..p1`.
///
/// # Safety
/// As [`gemm`], for this block.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    b: &PackedB,
    a: *const u8,
    lda: usize,
    rows: usize,
    p0: usize,
    p1: usize,
    out: OutPtr,
    words: &mut Vec<i16>,
) {
    match b.path {
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512Vnni => {
            // SAFETY: the path is only selected when the CPU supports it (KernelPath::is_supported_here).
            unsafe {
                super::x86_64::avx512vnni::gemm_block(b, &b.i8_panels, a, lda, rows, p0, p1, out)
            }
        }
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => {
            // Widen the A block to int16 once; the K tail (kp is even) is zero.
            words.resize(rows * b.kp, 0);
            for r in 0..rows {
                for kk in 0..b.kp {
                    // SAFETY: rows × lda bytes readable, lda ≥ kp.
                    words[r * b.kp + kk] = unsafe { *a.add(r * lda + kk) } as i16;
                }
            }
            // SAFETY: as above; AVX2 support checked at plan time.
            unsafe {
                super::x86_64::avx2::gemm_block(
                    b,
                    &b.i16_panels,
                    words.as_ptr(),
                    b.kp,
                    rows,
                    p0,
                    p1,
                    out,
                )
            }
        }
        _ => {
            let _ = words;
            // SAFETY: as above.
            unsafe { portable_block(b, a, lda, rows, p0, p1, out) }
        }
    }
}

/// Scalar epilogue for one element (qat-core's [`requantize_with`] in the epilogue's rounding).
#[inline]
pub fn epilogue_scalar(acc: i32, e: &Epilogue, col: usize) -> u8 {
    requantize_with(
        e.rounding,
        acc.wrapping_add(e.bias[col]),
        e.multipliers[col],
        e.zp,
        e.lo,
        e.hi,
    ) as u8
}

/// Portable micro-tile: `MR × 64` int32 accumulators over the k-major panel, then the scalar
/// epilogue.
unsafe fn portable_block(
    b: &PackedB,
    a: *const u8,
    lda: usize,
    rows: usize,
    p0: usize,
    p1: usize,
    out: OutPtr,
) {
    for r0 in (0..rows).step_by(MR) {
        let mr = MR.min(rows - r0);
        for p in p0..p1 {
            let panel = &b.i8_panels[p * b.kp * NR..(p + 1) * b.kp * NR];
            let mut acc = [[0i32; NR]; MR];
            for kk in 0..b.kp {
                let bk: &[i8; NR] = panel[kk * NR..(kk + 1) * NR]
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("panel rows hold NR bytes"));
                for (r, accr) in acc.iter_mut().enumerate().take(mr) {
                    // SAFETY: rows × lda bytes readable, lda ≥ kp.
                    let av = unsafe { *a.add((r0 + r) * lda + kk) } as i32;
                    for (acc_c, &w) in accr.iter_mut().zip(bk) {
                        *acc_c = acc_c.wrapping_add(av * w as i32);
                    }
                }
            }
            let cols = NR.min(b.n - p * NR);
            for (r, accr) in acc.iter().enumerate().take(mr) {
                for (c, &v) in accr.iter().enumerate().take(cols) {
                    let col = p * NR + c;
                    // SAFETY: (r0 + r, col) is inside the output block (caller).
                    unsafe {
                        match out {
                            OutPtr::U8(o, ld) => {
                                *o.add((r0 + r) * ld + col) = epilogue_scalar(v, &b.epi, col)
                            }
                            OutPtr::I32(o, ld) => {
                                *o.add((r0 + r) * ld + col) = v.wrapping_add(b.epi.bias[col])
                            }
                        }
                    }
                }
            }
        }
    }
}
