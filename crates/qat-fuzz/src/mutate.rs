//! Byte-level mutations: bit flips, boundary values, varint length edits, truncation, splicing.

use crate::rng::Rng;

/// Integer values at the edges of the types the formats use (as little-endian bytes when
/// written into a byte string, as numbers when written into a decoded field).
pub const BOUNDARY: [u64; 16] = [
    0,
    1,
    2,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0xFFFF,
    0x1_0000,
    0x1_0001,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

/// Applies 1 to 4 random byte-level mutations to `data`; `other` is a second input for splicing.
///
/// ```
/// let mut rng = qat_fuzz::rng::Rng::new(1);
/// let mut v = vec![0u8; 16];
/// qat_fuzz::mutate::bytes(&mut rng, &mut v, &[1, 2, 3]);
/// assert!(v.len() <= 16 + 64);
/// ```
pub fn bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        one(rng, data, other);
    }
}

fn one(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    if data.is_empty() {
        data.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(data.len());
    match rng.below(8) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = rng.next_u64() as u8,
        2 => {
            // A boundary value, 1/2/4/8 bytes little endian.
            let v = *rng.pick(&BOUNDARY);
            let w = *rng.pick(&[1usize, 2, 4, 8]);
            for (i, b) in v.to_le_bytes()[..w].iter().enumerate() {
                if let Some(d) = data.get_mut(at + i) {
                    *d = *b;
                }
            }
        }
        3 => {
            // A bincode varint length: 0xFB (u16), 0xFC (u32), 0xFD (u64) prefixes, or small.
            let v = *rng.pick(&BOUNDARY);
            let enc: Vec<u8> = match rng.below(4) {
                0 => vec![(v % 251) as u8],
                1 => [&[0xFBu8][..], &(v as u16).to_le_bytes()].concat(),
                2 => [&[0xFCu8][..], &(v as u32).to_le_bytes()].concat(),
                _ => [&[0xFDu8][..], &v.to_le_bytes()].concat(),
            };
            data.splice(at..(at + 1).min(data.len()), enc);
        }
        4 => data.truncate(at),
        5 => {
            // Delete or duplicate a short run.
            let len = 1 + rng.below(16).min(data.len() - at - 1);
            if rng.one_in(2) {
                data.drain(at..at + len);
            } else {
                let run: Vec<u8> = data[at..at + len].to_vec();
                data.splice(at..at, run);
            }
        }
        6 if !other.is_empty() => {
            // Splice: our prefix, the other input's suffix.
            let from = rng.below(other.len());
            data.truncate(at);
            data.extend_from_slice(&other[from..]);
        }
        _ => {
            let n = 1 + rng.below(64);
            for _ in 0..n {
                data.insert(at, rng.next_u64() as u8);
            }
        }
    }
}
