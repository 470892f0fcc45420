//! The GEMM frame: `C[m, n] = requantize(bias'[n] + Σ_k A[m, k]·B[k, n])` for any ISA.
//!
//! `A` is uint8 activations (rows = output pixels, im2col'd for k×k convs), `B` the int8 weights
//! packed by [`PackedB`]. The frame splits `C` into tasks of up to [`MC`] rows
//! (and column panels when `m` is small), runs them on rayon, fills `A` per task when it is not
//! in memory, and walks each task in micro-tiles of `MR × NR` (the last ones shorter or
//! narrower) that the ISA's [`GemmKernel::tile`] computes, output stage included. Each output
//! element is computed by the same tile code whatever the split, so results are identical for
//! any thread count.

use rayon::prelude::*;

use super::epilogue::{Epilogue, OutPtr, OutputStage};
use super::packed::{ASource, PackedB};

/// Rows per parallel task (a multiple of every ISA's `MR`).
pub(crate) const MC: usize = 96;

/// A packed-B element: the weight code as the tile's multiply instruction takes it.
pub(crate) trait PanelElem: Copy + Default + Send + Sync + 'static {
    /// The int8 weight code, widened where the instruction needs it.
    fn from_code(w: i8) -> Self;
}

impl PanelElem for i8 {
    #[inline]
    fn from_code(w: i8) -> Self {
        w
    }
}

impl PanelElem for i16 {
    #[inline]
    fn from_code(w: i8) -> Self {
        w as i16
    }
}

/// An A element as a tile reads it: the uint8 rows in place (`u8`), or a copy widened to `i16`
/// (the only two implementations).
pub(crate) trait AElem: Copy + Send + Sync + 'static {
    /// Whether the tile reads the uint8 rows in place (else the frame widens them to `i16`).
    const IN_PLACE: bool;
}

impl AElem for u8 {
    const IN_PLACE: bool = true;
}

impl AElem for i16 {
    const IN_PLACE: bool = false;
}

/// Rows `0..rows` of `kp` bytes at stride `lda`, as a tile reading `A` takes them:
/// `(pointer, stride)`, widened into `scratch` unless `A::IN_PLACE`.
///
/// # Safety
/// `a` has `rows` rows of `kp` readable bytes at stride `lda`.
unsafe fn prepare_a<A: AElem>(
    a: *const u8,
    lda: usize,
    rows: usize,
    kp: usize,
    scratch: &mut Vec<i16>,
) -> (*const A, usize) {
    const { assert!(size_of::<A>() == if A::IN_PLACE { 1 } else { 2 }) };
    if A::IN_PLACE {
        // A is u8.
        return (a.cast(), lda);
    }
    scratch.resize(rows * kp, 0);
    for r in 0..rows {
        for kk in 0..kp {
            // SAFETY: rows × lda bytes readable, lda ≥ kp (caller).
            scratch[r * kp + kk] = unsafe { *a.add(r * lda + kk) } as i16;
        }
    }
    // A is i16.
    (scratch.as_ptr().cast(), kp)
}

/// Where a micro-tile's results go (shared by [`TileArgs`] and [`IndirectArgs`]): the output
/// stage, the tile's columns, its first output row.
#[derive(Clone, Copy)]
pub(crate) struct TileDst<'a> {
    /// Output-stage constants (at least `col0 + NR` columns).
    pub(crate) e: &'a Epilogue,
    /// First column of the tile.
    pub(crate) col0: usize,
    /// Columns to store (`≤ NR`).
    pub(crate) cols: usize,
    /// The tile's first output row.
    pub(crate) out: OutPtr,
}

/// One micro-tile's operands ([`GemmKernel::tile`]).
pub(crate) struct TileArgs<'a, K: GemmKernel> {
    /// `M` rows of `kp` elements.
    pub(crate) a: *const K::A,
    /// A row stride.
    pub(crate) lda: usize,
    /// One packed panel of `kp·NR` elements.
    pub(crate) panel: *const K::W,
    /// Padded reduction length.
    pub(crate) kp: usize,
    /// Where the results go.
    pub(crate) dst: TileDst<'a>,
}

/// One indirect micro-tile's operands ([`IndirectTile::tile_indirect`]).
pub(crate) struct IndirectArgs<'a, K: GemmKernel> {
    /// `M·taps` segment pointers (row `r`, tap `t` at `r·taps + t`).
    pub(crate) ptrs: &'a [*const u8],
    /// Segments per row.
    pub(crate) taps: usize,
    /// Bytes per segment.
    pub(crate) seg: usize,
    /// One packed panel of `taps·seg·NR` elements.
    pub(crate) panel: *const K::W,
    /// Where the results go.
    pub(crate) dst: TileDst<'a>,
}

/// An ISA's GEMM micro-kernel.
///
/// Packed B: panels of `NR` columns; inside a panel, for each group of `KG` consecutive `k`,
/// `NR × KG` elements `[n][k mod KG]` (`KG = 1`: k-major rows of `NR`); `kp = round_up(k, KG)`,
/// padding columns and the K tail are zero.
pub(crate) trait GemmKernel: OutputStage + Sized + Send + Sync + 'static {
    /// Rows of a micro-tile (`1 ≤ MR ≤ 8`, dividing [`MC`]).
    const MR: usize;
    /// Columns of a packed panel and of a micro-tile.
    const NR: usize;
    /// Consecutive `k` per column in a panel (the multiply instruction's dot-product width).
    const KG: usize;
    /// The packed weight element.
    type W: PanelElem;
    /// The A element the tile reads.
    type A: AElem;
    /// The indirect tile loop (implicit im2col, [`IndirectBlock`]), for ISAs that read the
    /// segments in place; `None`: the frame gathers them into rows first.
    const INDIRECT: Option<unsafe fn(&IndirectBlock<'_, Self>)> = None;

    /// One `M × NR` tile (`M ≤ MR`) over the whole reduction, then the output stage (masked past
    /// `cols`): `+ bias'`, requantize (u8 out) or store the int32 sums.
    ///
    /// # Safety
    /// The CPU supports the ISA; `t.a` has `M` rows of `t.kp` elements at stride `t.lda`;
    /// `t.panel` is one packed panel; `t.dst.out` is valid for `M` rows × `t.dst.cols` columns
    /// from `t.dst.col0`; u8 output only when `t.dst.e.fused`.
    unsafe fn tile<const M: usize>(t: &TileArgs<'_, Self>);

    /// [`tile_loop::<Self>`](tile_loop) compiled with the ISA's target features (so the tiles
    /// inline into it).
    ///
    /// # Safety
    /// As [`tile_loop`].
    unsafe fn block(blk: &Block<'_, Self>);
}

/// One task's work for [`GemmKernel::block`]: `rows ≤ MC` rows of A against panels `p0..p1`.
pub(crate) struct Block<'a, K: GemmKernel> {
    /// The packed panels.
    pub(crate) panels: &'a [K::W],
    /// Columns of C (real, not padded).
    pub(crate) n: usize,
    /// Padded reduction length.
    pub(crate) kp: usize,
    /// Output-stage constants.
    pub(crate) epi: &'a Epilogue,
    /// First A row of the task.
    pub(crate) a: *const K::A,
    /// A row stride.
    pub(crate) lda: usize,
    /// Rows in the task.
    pub(crate) rows: usize,
    /// First panel.
    pub(crate) p0: usize,
    /// One past the last panel.
    pub(crate) p1: usize,
    /// The task's first output row.
    pub(crate) out: OutPtr,
}

/// One task of the indirect GEMM: row `r`'s reduction runs over `taps` segments of `seg` bytes
/// read in place at `ptrs[r·taps + t]` (padding segments point at a row of `Z1`).
pub(crate) struct IndirectBlock<'a, K: GemmKernel> {
    /// The packed panels.
    pub(crate) panels: &'a [K::W],
    /// Columns of C.
    pub(crate) n: usize,
    /// Padded reduction length, `taps·seg`.
    pub(crate) kp: usize,
    /// Output-stage constants.
    pub(crate) epi: &'a Epilogue,
    /// `rows·taps` segment pointers.
    pub(crate) ptrs: &'a [*const u8],
    /// Segments per row.
    pub(crate) taps: usize,
    /// Bytes per segment (a multiple of 4).
    pub(crate) seg: usize,
    /// Rows in the task.
    pub(crate) rows: usize,
    /// First panel.
    pub(crate) p0: usize,
    /// One past the last panel.
    pub(crate) p1: usize,
    /// The task's first output row.
    pub(crate) out: OutPtr,
}

/// Whether a tile height works with the frame: `1..=8` rows (the arms of `with_rows!`), dividing
/// [`MC`].
const fn valid_mr(mr: usize) -> bool {
    mr >= 1 && mr <= 8 && MC.is_multiple_of(mr)
}

/// Calls `<$k>::$call::<M>($arg)` for the run-time row count `$mr ∈ 1..=8` (arms above `K::MR`
/// are never taken).
macro_rules! with_rows {
    ($mr:expr, $k:ty, $call:ident($arg:expr)) => {
        match $mr {
            1 => <$k>::$call::<1>($arg),
            2 => <$k>::$call::<2>($arg),
            3 => <$k>::$call::<3>($arg),
            4 => <$k>::$call::<4>($arg),
            5 => <$k>::$call::<5>($arg),
            6 => <$k>::$call::<6>($arg),
            7 if <$k>::MR >= 7 => <$k>::$call::<7>($arg),
            _ if <$k>::MR >= 8 => <$k>::$call::<8>($arg),
            _ => {}
        }
    };
}

/// The destination of panel `p`'s tile (`nr` columns per panel, `n` in all) at output row `o`.
#[inline(always)]
fn tile_dst(e: &Epilogue, p: usize, nr: usize, n: usize, o: OutPtr) -> TileDst<'_> {
    let (col0, cols) = (p * nr, nr.min(n - p * nr));
    TileDst {
        e,
        col0,
        cols,
        out: o,
    }
}

/// The tile loop of one task: row tiles of `MR` (the last one shorter) × the task's panels.
/// Inlined into each ISA's [`GemmKernel::block`].
///
/// # Safety
/// The CPU supports the ISA; `blk.a` holds `blk.rows` rows of `blk.kp` elements at stride
/// `blk.lda`; `blk.out` is valid for `blk.rows` rows × `blk.n` columns; `p1` ≤ the panel count.
#[inline(always)]
pub(crate) unsafe fn tile_loop<K: GemmKernel>(blk: &Block<'_, K>) {
    const { assert!(valid_mr(K::MR)) };
    let (kp, e) = (blk.kp, blk.epi);
    let mut r0 = 0;
    while r0 < blk.rows {
        let mr = K::MR.min(blk.rows - r0);
        // SAFETY: offsets stay inside the block (caller).
        unsafe {
            let ar = blk.a.add(r0 * blk.lda);
            let o = blk.out.offset(r0, 0);
            for p in blk.p0..blk.p1 {
                let t = TileArgs::<K> {
                    a: ar,
                    lda: blk.lda,
                    panel: blk.panels.as_ptr().add(p * kp * K::NR),
                    kp,
                    dst: tile_dst(e, p, K::NR, blk.n, o),
                };
                with_rows!(mr, K, tile(&t));
            }
        }
        r0 += K::MR;
    }
}

/// The indirect tile of ISAs that read implicit-im2col segments in place.
pub(crate) trait IndirectTile: GemmKernel {
    /// One `M × NR` tile whose row `r` reduces over `t.taps` segments of `t.seg` bytes at
    /// `t.ptrs[r·taps + tap]`, then the output stage (as [`GemmKernel::tile`]).
    ///
    /// # Safety
    /// The CPU supports the ISA; every pointer has `seg` readable bytes, `seg % 4 == 0`,
    /// `taps·seg` is the panel's `kp`; `t.dst` valid for `M` rows (as [`GemmKernel::tile`]).
    unsafe fn tile_indirect<const M: usize>(t: &IndirectArgs<'_, Self>);
}

/// [`tile_loop`] for an [`IndirectBlock`]; inlined into the ISA's [`GemmKernel::INDIRECT`] entry.
///
/// # Safety
/// The CPU supports the ISA; `blk.ptrs` holds `blk.rows·blk.taps` pointers with `blk.seg`
/// readable bytes each; `taps·seg == kp`; `blk.out` valid for `blk.rows` rows × `blk.n` columns.
#[inline(always)]
pub(crate) unsafe fn indirect_tile_loop<K: IndirectTile>(blk: &IndirectBlock<'_, K>) {
    const { assert!(valid_mr(K::MR)) };
    let (taps, seg, e) = (blk.taps, blk.seg, blk.epi);
    let mut r0 = 0;
    while r0 < blk.rows {
        let mr = K::MR.min(blk.rows - r0);
        // SAFETY: offsets stay inside the block (caller).
        unsafe {
            let pr = &blk.ptrs[r0 * taps..];
            let o = blk.out.offset(r0, 0);
            for p in blk.p0..blk.p1 {
                let t = IndirectArgs::<K> {
                    ptrs: pr,
                    taps,
                    seg,
                    panel: blk.panels.as_ptr().add(p * blk.kp * K::NR),
                    dst: tile_dst(e, p, K::NR, blk.n, o),
                };
                with_rows!(mr, K, tile_indirect(&t));
            }
        }
        r0 += K::MR;
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new(Scratch::new()) };
}

/// Per-thread buffers of the GEMM tasks, reused across calls.
struct Scratch {
    /// A rows filled on demand (im2col, gathered segments).
    bytes: Vec<u8>,
    /// A rows widened for the tile ([`prepare_a`]).
    words: Vec<i16>,
    /// Segment pointers of the indirect GEMM.
    ptrs: Vec<*const u8>,
    /// int32 results of the scalar output stage.
    acc: Vec<i32>,
}

impl Scratch {
    const fn new() -> Self {
        Self {
            bytes: Vec::new(),
            words: Vec::new(),
            ptrs: Vec::new(),
            acc: Vec::new(),
        }
    }
}

/// `C[m × b.n] = epilogue(A[m × k] · B)` on ISA `K` (`panels` packed by `K`), parallel over row
/// blocks of [`MC`] (and over column panels when `m` is small).
///
/// # Safety
/// The CPU supports `K`; `out` is valid for `m` rows of `b.n` columns at its stride and not
/// aliased by `a`; `a` satisfies [`ASource`]'s contract for `m` rows of `b.kp` bytes.
pub(crate) unsafe fn gemm<K: GemmKernel>(
    m: usize,
    a: &ASource<'_>,
    b: &PackedB,
    panels: &[K::W],
    out: OutPtr,
) {
    if m == 0 || b.n == 0 {
        return;
    }
    let panel_count = b.n.div_ceil(K::NR);
    let threads = crate::kernels::par::threads(m.saturating_mul(b.n).saturating_mul(b.kp));
    let mc = block_rows(m, threads, K::MR);
    let row_blocks = m.div_ceil(mc);
    // Few rows (FC, GEMV): split the columns too so every thread has work.
    let col_blocks = if threads == 1 || row_blocks >= 2 * threads {
        1
    } else {
        panel_count.min((2 * threads).div_ceil(row_blocks)).max(1)
    };
    let panels_per_block = panel_count.div_ceil(col_blocks);
    let tasks = row_blocks * col_blocks;
    let run = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let row0 = rb * mc;
        let rows = mc.min(m - row0);
        let p0 = cb * panels_per_block;
        let p1 = (p0 + panels_per_block).min(panel_count);
        if p0 >= p1 {
            return;
        }
        SCRATCH.with(|s| {
            // SAFETY: the task's rows and panels lie inside the call's (caller).
            unsafe {
                task::<K>(
                    a,
                    b,
                    panels,
                    row0,
                    rows,
                    p0,
                    p1,
                    out.offset(row0, 0),
                    &mut s.borrow_mut(),
                )
            }
        });
    };
    if threads == 1 {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// Rows per task of an `m`-row GEMM on `threads` threads: [`MC`] on one thread; else as even as
/// whole `mr`-row tiles allow over a multiple of `threads` tasks of at most [`MC`] rows, so that
/// no thread waits on a short last block (196 rows on 2 threads: 4 × 54 → 54, 54, 54, 34
/// instead of 96, 96, 4).
fn block_rows(m: usize, threads: usize, mr: usize) -> usize {
    if threads <= 1 {
        return MC;
    }
    let blocks = m.div_ceil(MC).next_multiple_of(threads);
    m.div_ceil(blocks).next_multiple_of(mr).clamp(mr, MC)
}

/// One task: rows `row0..row0 + rows` against panels `p0..p1`, output at the task's first row.
///
/// # Safety
/// As [`gemm`], for this task.
#[allow(clippy::too_many_arguments)]
unsafe fn task<K: GemmKernel>(
    a: &ASource<'_>,
    b: &PackedB,
    panels: &[K::W],
    row0: usize,
    rows: usize,
    p0: usize,
    p1: usize,
    out: OutPtr,
    s: &mut Scratch,
) {
    let Scratch {
        bytes,
        words,
        ptrs,
        acc,
    } = s;
    let e = &b.epi;
    // The scalar output stage: the tiles write int32 into scratch, qat-core requantizes.
    let scalar = matches!(out, OutPtr::U8(..)) && !e.fused;
    let dst = if scalar {
        acc.resize(rows * b.n, 0);
        OutPtr::I32(acc.as_mut_ptr(), b.n)
    } else {
        out
    };
    let dense = |a: *const u8, lda: usize, words: &mut Vec<i16>| {
        // SAFETY: rows × lda bytes readable at `a` (each source below); dst covers the task.
        unsafe {
            let (a, lda) = prepare_a::<K::A>(a, lda, rows, b.kp, words);
            let blk = Block::<K> {
                panels,
                n: b.n,
                kp: b.kp,
                epi: e,
                a,
                lda,
                rows,
                p0,
                p1,
                out: dst,
            };
            K::block(&blk);
        }
    };
    match a {
        ASource::Direct { data, lda } => dense(data[row0 * lda..].as_ptr(), *lda, words),
        ASource::Fill(fill) => {
            bytes.resize(MC * b.kp, 0);
            fill(row0, rows, &mut bytes[..rows * b.kp]);
            dense(bytes.as_ptr(), b.kp, words);
        }
        ASource::Indirect(ind) => {
            let taps = ind.taps;
            ptrs.resize(MC * taps, std::ptr::null());
            (ind.fill_ptrs)(row0, rows, &mut ptrs[..rows * taps]);
            if let Some(indirect) = K::INDIRECT {
                let blk = IndirectBlock::<K> {
                    panels,
                    n: b.n,
                    kp: b.kp,
                    epi: e,
                    ptrs: &ptrs[..rows * taps],
                    taps,
                    seg: ind.seg,
                    rows,
                    p0,
                    p1,
                    out: dst,
                };
                // SAFETY: every pointer has `seg` readable bytes (ASource::indirect's contract).
                unsafe { indirect(&blk) };
            } else {
                // Gather the segments into a row block.
                bytes.resize(MC * b.kp, 0);
                let seg = ind.seg;
                for r in 0..rows {
                    for t in 0..taps {
                        // SAFETY: every pointer has `seg` readable bytes (ASource::indirect).
                        let src = unsafe { std::slice::from_raw_parts(ptrs[r * taps + t], seg) };
                        bytes[r * b.kp + t * seg..r * b.kp + (t + 1) * seg].copy_from_slice(src);
                    }
                }
                dense(bytes.as_ptr(), b.kp, words);
            }
        }
    }
    if scalar {
        let (c0, c1) = (p0 * K::NR, (p1 * K::NR).min(b.n));
        let OutPtr::U8(o, ld) = out else { return };
        for r in 0..rows {
            for col in c0..c1 {
                // SAFETY: (r, col) lies in the task's block of `out` (caller).
                unsafe { *o.add(r * ld + col) = e.requantize(acc[r * b.n + col], col) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_are_even_whole_tiles_of_at_most_mc_rows() {
        assert_eq!(block_rows(196, 1, 6), MC);
        assert_eq!(block_rows(196, 2, 6), 54);
        assert_eq!(block_rows(1, 2, 6), 6);
        for m in 1..700 {
            for threads in 2..5 {
                let mc = block_rows(m, threads, 6);
                assert!(mc.is_multiple_of(6) && mc <= MC, "{m} {threads}");
                let blocks = m.div_ceil(mc);
                // Never more blocks than the even split asked for.
                assert!(
                    blocks <= m.div_ceil(MC).next_multiple_of(threads),
                    "{m} {threads}"
                );
            }
        }
    }
}
