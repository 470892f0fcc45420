//! Short copies and fills (input rows of small images into padded buffers, the taps and the K
//! padding of im2col rows): a `memcpy`/`memset` call per few bytes costs more than the bytes.

/// `dst.copy_from_slice(src)`, as fixed-size moves when `len ≤ 128`: one move of the exact size
/// below 8 bytes, else whole chunks of 32, 16 or 8 bytes and one last chunk overlapping the
/// previous one.
#[inline]
pub(crate) fn copy_row(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    match n {
        32..=128 => chunks::<32>(&mut dst[..n], src),
        16..=31 => chunks::<16>(&mut dst[..n], src),
        8..=15 => chunks::<8>(&mut dst[..n], src),
        1 => dst[..1].copy_from_slice(src),
        2 => dst[..2].copy_from_slice(src),
        3 => dst[..3].copy_from_slice(src),
        4 => dst[..4].copy_from_slice(src),
        5 => dst[..5].copy_from_slice(src),
        6 => dst[..6].copy_from_slice(src),
        7 => dst[..7].copy_from_slice(src),
        _ => dst[..n].copy_from_slice(src),
    }
}

/// `dst.fill(v)`, with fixed-size stores for up to 16 bytes (the K padding of an im2col row, the
/// side padding of a band).
#[inline(always)]
pub(crate) fn fill_small(dst: &mut [u8], v: u8) {
    macro_rules! sizes {
        ($($n:literal)*) => {
            match dst.len() {
                $($n => dst[..$n].fill(v),)*
                _ => dst.fill(v),
            }
        };
    }
    sizes!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// [`copy_row`] with chunks of `C` bytes (`C ≤ len`).
#[inline(always)]
fn chunks<const C: usize>(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    debug_assert!(n >= C && dst.len() == n);
    let mut i = 0;
    while i + C <= n {
        dst[i..i + C].copy_from_slice(&src[i..i + C]);
        i += C;
    }
    if i < n {
        dst[n - C..].copy_from_slice(&src[n - C..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to 200 at several offsets: the copy equals the source and the bytes
    /// around it are untouched.
    #[test]
    fn copies_exactly_the_row() {
        for n in 0..200usize {
            for off in [0usize, 1, 7] {
                let src: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
                let mut dst = vec![0xAAu8; n + off + 5];
                copy_row(&mut dst[off..off + n], &src);
                assert_eq!(&dst[off..off + n], &src[..], "n {n} off {off}");
                assert!(dst[..off].iter().all(|&b| b == 0xAA), "before, n {n}");
                assert!(dst[off + n..].iter().all(|&b| b == 0xAA), "after, n {n}");
            }
        }
    }
}
