//! Packed weights ([`PackedB`]) and the A operand ([`ASource`]) of the GEMM frame.
//!
//! With symmetric weights (`Z2 = 0`) the paper's eq. 7–8 reduce to
//! `Σ (q1 − Z1)·q2 = Σ q1·q2 − Z1·a2[n]` with the column sum `a2[n] = Σ_k B[k, n]`, so the
//! zero-point correction is folded into the bias once, at pack time:
//! `bias'[n] = bias[n] − Z1·a2[n]`. The tiles then compute a plain u8×i8 dot product and the
//! output stage (fixed-point multiplier, `+ Z3`, clamp, narrow to u8) runs on the accumulator
//! tile while it is still in registers.
//!
//! Tolerance: int32 accumulators and uint8 outputs are bit-exact against the reference loops on
//! every path (wrapping int32 makes every summation order equal).

use super::epilogue::{Epilogue, OutPtr};
use super::gemm::{GemmKernel, PanelElem, gemm};
use super::{KernelError, LayerSpec, round_up};
use crate::kernels::KernelPath;

/// Weights packed for one ISA, with the per-column output-stage constants. Built only by
/// [`PackedB::new`] from a checked [`LayerSpec`], for a path this CPU supports.
#[derive(Debug)]
pub struct PackedB {
    path: KernelPath,
    /// Columns (output channels).
    pub(crate) n: usize,
    /// Reduction length.
    pub(crate) k: usize,
    /// `k` rounded up to the ISA's k-group.
    pub(crate) kp: usize,
    /// Output-stage constants, padded to a whole number of panels.
    pub(crate) epi: Epilogue,
    /// The panels, typed for their ISA, and the GEMM frame instantiated for it.
    panels: Box<dyn Panels>,
}

/// Packed panels of one ISA: the plan's single dispatch point into the GEMM frame.
trait Panels: Send + Sync + std::fmt::Debug {
    /// [`gemm`] for the ISA that packed the panels.
    ///
    /// # Safety
    /// As [`gemm`].
    unsafe fn gemm(&self, b: &PackedB, m: usize, a: &ASource<'_>, out: OutPtr);
}

struct PanelsOf<K: GemmKernel>(Vec<K::W>);

impl<K: GemmKernel> std::fmt::Debug for PanelsOf<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} packed elements", self.0.len())
    }
}

impl<K: GemmKernel> Panels for PanelsOf<K> {
    unsafe fn gemm(&self, b: &PackedB, m: usize, a: &ASource<'_>, out: OutPtr) {
        // SAFETY: as documented; the panels were packed by `K`, whose path the CPU supports.
        unsafe { gemm::<K>(m, a, b, &self.0, out) }
    }
}

impl PackedB {
    /// Packs `n` columns of length `k` (OHWI rows: `layer.weights[col·k + kk]`) for `path`.
    ///
    /// Errors: `Reference` (it has no packed kernels), a path this CPU does not support, or an
    /// inconsistent layer ([`LayerSpec`]'s field ranges).
    pub fn new(
        path: KernelPath,
        n: usize,
        k: usize,
        layer: &LayerSpec<'_>,
    ) -> Result<Self, KernelError> {
        let kernels = path.kernels().ok_or(KernelError::NotPacked { path })?;
        if !kernels.is_supported_here() {
            return Err(KernelError::Unsupported { path });
        }
        layer.check(n, k)?;
        Ok(kernels.pack(path, n, k, layer))
    }

    /// [`PackedB::new`] for ISA `K` (the layer already checked).
    pub(crate) fn pack<K: GemmKernel>(
        path: KernelPath,
        n: usize,
        k: usize,
        layer: &LayerSpec<'_>,
    ) -> Self {
        let (nr, kg) = (K::NR, K::KG);
        let kp = round_up(k.max(1), kg);
        let np = round_up(n.max(1), nr);
        let w = layer.weights;
        let mut panels = vec![K::W::default(); np * kp];
        for col in 0..n {
            let (p, c) = (col / nr, col % nr);
            for kk in 0..k {
                panels[p * kp * nr + (kk / kg) * nr * kg + c * kg + kk % kg] =
                    K::W::from_code(w[col * k + kk]);
            }
        }
        let col_sums = |c: usize| {
            w[c * k..(c + 1) * k]
                .iter()
                .fold((0i32, 0u64), |(s, a), &v| {
                    (s.wrapping_add(v as i32), a + v.unsigned_abs() as u64)
                })
        };
        let mut epi = Epilogue::new(layer, n, np, col_sums, K::fuses(layer.target));
        if epi.fused {
            epi.single_shift = K::single_shift(&epi, n).map(Box::new);
        }
        Self {
            path,
            n,
            k,
            kp,
            epi,
            panels: Box::new(PanelsOf::<K>(panels)),
        }
    }

    /// The path the panels are laid out for.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// Columns (output channels).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The reduction length rounded up to the ISA's k-group: what an A row must hold.
    pub fn kp(&self) -> usize {
        self.kp
    }

    /// Makes the frame requantize through int32 and qat-core's scalar stage, as it does for a
    /// rounding the ISA does not fuse (tests of that fallback on every ISA).
    #[doc(hidden)]
    pub fn with_scalar_output_stage(mut self) -> Self {
        self.epi.fused = false;
        self.epi.single_shift = None;
        self
    }

    /// `C = epilogue(A·B)`, unchecked.
    ///
    /// # Safety
    /// `out` is valid for `m` rows of `self.n` columns at its stride and not aliased by `a`; `a`
    /// has `m` rows of `self.kp` bytes as [`ASource`] describes.
    pub(crate) unsafe fn gemm_unchecked(&self, m: usize, a: &ASource<'_>, out: OutPtr) {
        // SAFETY: as documented.
        unsafe { self.panels.gemm(self, m, a, out) }
    }

    /// `C[m × n] = epilogue(A[m × k]·B)`: requantized u8 (`GemmOut::U8`) or the int32
    /// accumulators `acc + bias'` (`GemmOut::I32`), after checking every buffer.
    pub fn gemm(&self, m: usize, a: &ASource<'_>, out: GemmOut<'_>) -> Result<(), KernelError> {
        if m == 0 || self.n == 0 {
            return Ok(());
        }
        let rows_len =
            |ld: usize, row: usize| (m - 1).checked_mul(ld).and_then(|v| v.checked_add(row));
        let check = |buffer, len: usize, ld: usize, row: usize| match rows_len(ld, row) {
            Some(needed) if ld >= row && len >= needed => Ok(()),
            needed => Err(KernelError::Buffer {
                buffer,
                len,
                needed: needed.unwrap_or(usize::MAX).max(row),
            }),
        };
        if let ASource::Direct { data, lda } = a {
            check("a", data.len(), *lda, self.kp)?;
        }
        let ptr = match out {
            GemmOut::U8(o, ld) => {
                check("out", o.len(), ld, self.n)?;
                OutPtr::U8(o.as_mut_ptr(), ld)
            }
            GemmOut::I32(o, ld) => {
                check("out", o.len(), ld, self.n)?;
                OutPtr::I32(o.as_mut_ptr(), ld)
            }
        };
        // SAFETY: checked above; `Fill` writes into the frame's own scratch, and `Indirect` is
        // built only by the unsafe `ASource::indirect`, whose caller vouches for its pointers.
        unsafe { self.gemm_unchecked(m, a, ptr) };
        Ok(())
    }
}

/// The output of [`PackedB::gemm`]: a buffer and its row stride (`≥ n`).
pub enum GemmOut<'a> {
    /// Requantized uint8 codes.
    U8(&'a mut [u8], usize),
    /// int32 accumulators `acc + bias'`.
    I32(&'a mut [i32], usize),
}

/// The A operand: rows of `kp` bytes (zero past `k`: the packed K tail is zero anyway).
pub enum ASource<'a> {
    /// `A` in memory: row `r` is `data[r·lda..r·lda + kp]`, with `lda ≥ kp`.
    Direct {
        /// The bytes.
        data: &'a [u8],
        /// Row stride.
        lda: usize,
    },
    /// `fill(row0, rows, dst)` writes `rows` rows of `kp` bytes into `dst` (per-task scratch:
    /// tiled im2col, padded FC rows).
    Fill(&'a (dyn Fn(usize, usize, &mut [u8]) + Sync)),
    /// Implicit im2col (tap-segment pointers), built only inside the crate.
    #[doc(hidden)]
    Indirect(Indirect<'a>),
}

/// The indirection of [`ASource::Indirect`]: row `r` of `A` is `taps` segments of `seg` bytes.
pub struct Indirect<'a> {
    pub(crate) taps: usize,
    pub(crate) seg: usize,
    #[allow(clippy::type_complexity)]
    pub(crate) fill_ptrs: &'a (dyn Fn(usize, usize, &mut [*const u8]) + Sync),
}

impl<'a> ASource<'a> {
    /// Implicit im2col (indirection): row `r` of `A` is `taps` segments of `seg` bytes, segment
    /// `t` starting at `ptrs[r·taps + t]` as written by `fill_ptrs(row0, rows, ptrs)`. Kernels
    /// with an indirect tile read the segments in place; the frame gathers them for the others.
    ///
    /// # Safety
    /// `seg % 4 == 0` and `taps·seg` equals the packed `kp` of every GEMM this source is used
    /// with; every pointer `fill_ptrs` writes has `seg` readable bytes that stay valid and
    /// unmodified for `'a`.
    pub(crate) unsafe fn indirect(
        taps: usize,
        seg: usize,
        fill_ptrs: &'a (dyn Fn(usize, usize, &mut [*const u8]) + Sync),
    ) -> Self {
        ASource::Indirect(Indirect {
            taps,
            seg,
            fill_ptrs,
        })
    }
}
