//! How a run divides the batch among threads: chunks of samples, and each chunk's part of every
//! tensor buffer.

use std::ops::Range;

use super::Buf;
use crate::model::{DType, Int8Model};

/// The batch's chunks for `threads` threads: the whole batch for one thread or one sample, else
/// a multiple of `threads` consecutive chunks of near-equal sizes, of at most `tile` samples
/// where the batch allows.
pub(super) fn chunks(n: usize, threads: usize, tile: usize) -> Vec<Range<usize>> {
    if threads < 2 || n < 2 {
        return std::iter::once(0..n).collect();
    }
    let count = n.div_ceil(tile.max(1)).next_multiple_of(threads).min(n);
    (0..count)
        .map(|i| i * n / count..(i + 1) * n / count)
        .collect()
}

/// One tensor's samples in a chunk of the batch.
pub(super) enum View<'a> {
    U8(&'a mut [u8]),
    F32(&'a mut [f32]),
}

impl<'a> View<'a> {
    /// The first `at` elements and the rest.
    pub(super) fn split_at(self, at: usize) -> (Self, Self) {
        match self {
            View::U8(v) => {
                let (a, b) = v.split_at_mut(at);
                (View::U8(a), View::U8(b))
            }
            View::F32(v) => {
                let (a, b) = v.split_at_mut(at);
                (View::F32(a), View::F32(b))
            }
        }
    }
}

impl Default for View<'_> {
    fn default() -> Self {
        View::U8(&mut [])
    }
}

/// `views[c][t]`: chunk `c`'s samples of tensor `t` (`sizes[t]` elements per sample; `chunks`
/// consecutive, from sample 0) where `whole[t]`, else room for one tile of chunk `c`
/// (`min(tile, chunk size)` samples; the buffer holds these tiles back to back).
pub(super) fn chunk_views<'a>(
    bufs: &'a mut [Buf],
    sizes: &[usize],
    whole: &[bool],
    tile: usize,
    chunks: &[Range<usize>],
) -> Vec<Vec<View<'a>>> {
    let mut views: Vec<Vec<View<'a>>> = chunks.iter().map(|_| Vec::new()).collect();
    for ((buf, &per), &whole) in bufs.iter_mut().zip(sizes).zip(whole) {
        let mut rest = match buf {
            Buf::U8(v) => View::U8(v),
            Buf::F32(v) => View::F32(v),
        };
        for (c, r) in chunks.iter().enumerate() {
            let samples = if whole { r.len() } else { r.len().min(tile) };
            let (head, tail) = rest.split_at(samples * per);
            views[c].push(head);
            rest = tail;
        }
    }
    views
}

/// Bytes of the tensors a tile of samples may keep in cache (about half of a core's L2).
const TILE_BYTES: usize = 512 * 1024;

/// Samples per tile: as many as keep every tensor of the tile within [`TILE_BYTES`] (at least 1).
pub(super) fn tile_samples(model: &Int8Model, sizes: &[usize]) -> usize {
    let per_sample: usize = model
        .tensors
        .iter()
        .zip(sizes)
        .map(|(t, &n)| {
            n.saturating_mul(match t.dtype {
                DType::U8 => 1,
                DType::F32 => 4,
            })
        })
        .fold(0usize, usize::saturating_add);
    (TILE_BYTES / per_sample.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_batch_in_near_equal_parts() {
        let whole = |c: Vec<Range<usize>>| (c.len() == 1).then(|| c[0].clone());
        assert_eq!(whole(chunks(64, 1, 25)), Some(0..64));
        assert_eq!(whole(chunks(1, 2, 25)), Some(0..1));
        assert_eq!(whole(chunks(0, 2, 25)), Some(0..0));
        assert_eq!(chunks(64, 2, 25), [0..16, 16..32, 32..48, 48..64]);
        assert_eq!(chunks(3, 2, 25), [0..1, 1..3]);
        for n in 2..40 {
            for threads in 2..5 {
                for tile in 1..9 {
                    let c = chunks(n, threads, tile);
                    assert_eq!(c[0].start, 0);
                    assert_eq!(c[c.len() - 1].end, n);
                    assert!(c.windows(2).all(|w| w[0].end == w[1].start));
                    let (lo, hi) = (
                        c.iter().map(Range::len).min(),
                        c.iter().map(Range::len).max(),
                    );
                    assert!(
                        lo >= Some(1) && hi <= lo.map(|l| l + 1),
                        "{n} {threads} {tile}"
                    );
                    assert!(
                        c.len() == n || c.len().is_multiple_of(threads),
                        "{n} {threads} {tile}"
                    );
                }
            }
        }
    }

    #[test]
    fn views_split_every_buffer_at_the_chunks() {
        let mut bufs = vec![Buf::U8((0..6).collect()), Buf::F32(vec![1.0, 2.0, 3.0])];
        let views = chunk_views(&mut bufs, &[2, 1], &[true, true], 2, &[0..1, 1..3]);
        let got: Vec<Vec<String>> = views
            .iter()
            .map(|c| {
                c.iter()
                    .map(|v| match v {
                        View::U8(v) => format!("{v:?}"),
                        View::F32(v) => format!("{v:?}"),
                    })
                    .collect()
            })
            .collect();
        assert_eq!(got, [["[0, 1]", "[1.0]"], ["[2, 3, 4, 5]", "[2.0, 3.0]"]]);
    }
}
