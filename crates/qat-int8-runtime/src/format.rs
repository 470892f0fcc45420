//! The `.qat8` file: a fixed 28-byte header followed by a bincode payload.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic [`MAGIC`] = `\x89QAT8\r\n\x1a` (PNG-style: catches text-mode and 7-bit transfers) |
//! | 8 | 4 | format version, u32 little endian ([`FORMAT_VERSION`]; version 1 is still read) |
//! | 12 | 4 | flags, u32 LE, must be 0 (reserved) |
//! | 16 | 8 | payload length in bytes, u64 LE; must equal the remaining file length |
//! | 24 | 4 | CRC-32 (ISO-HDLC, the zlib/PNG polynomial) of the payload, u32 LE |
//! | 28 | … | payload: [`Int8Model`] as serde + bincode 2 (standard config, varint lengths) |
//!
//! Versions: 2 added [`Int8Model::rounding`] (the last field of the payload, a bincode enum
//! index: 0 = `Gemmlowp`, 1 = `Single`). A version-1 payload is the same encoding without that
//! field; it decodes as `Target::Tflite` (the old `Rounding::Gemmlowp`), the only rounding version-1 runtimes had: an
//! old file runs as a `tflite` model.
//!
//! Loading checks, in order: file length (at most [`HEADER_LEN`] + the payload limit), magic,
//! version, flags, payload length (equal to the bytes that follow, and at most
//! [`Limits::max_payload_bytes`](crate::limits::Limits::max_payload_bytes), default
//! [`DEFAULT_MAX_PAYLOAD_BYTES`](crate::limits::DEFAULT_MAX_PAYLOAD_BYTES) = 256 MiB), checksum;
//! then it decodes the payload section by section (`name`, `tensors[i]`, `ops[i]`, `input`,
//! `outputs[i]`, `rounding`), refuses trailing bytes, runs [`Int8Model::validate`] and finally
//! checks the model's cost against the [`Limits`](crate::limits::Limits) (activation memory, MACs and pool work per
//! sample; defaults in [`crate::limits`]). [`LoadOptions`] raises any limit.
//!
//! No input makes it panic, and memory is bounded by the input: [`Int8Model::load_with`] reads
//! at most the limit plus one byte, whatever the file claims to be (`/dev/zero` included);
//! decoding borrows strings from the payload instead of preallocating what a length prefix
//! claims, a sequence count larger than the bytes left is refused before anything is reserved,
//! and serde's cautious size hints keep every other reservation proportional to bytes read.
//! A decode error names the section (`ops[3]`) and the file offset where that section starts.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::limits::LoadOptions;
use crate::model::{Int8Model, Op, TensorInfo};
use crate::validate::ValidationError;
use qat_core::target::Target;

/// The first 8 bytes of every `.qat8` file.
pub const MAGIC: [u8; 8] = *b"\x89QAT8\r\n\x1a";
/// The format version this crate writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this crate reads (version 1: no [`Int8Model::rounding`] field, read
/// as `Target::Tflite`, the old `Rounding::Gemmlowp`).
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Size of the fixed header preceding the payload.
pub const HEADER_LEN: usize = 28;

/// Why a `.qat8` file could not be read.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is shorter than the header.
    #[error("file is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The file or its payload is larger than [`Limits::max_payload_bytes`](crate::limits::Limits::max_payload_bytes) allows.
    #[error(
        "payload of {len} bytes (or more) exceeds the {limit}-byte limit (raise it with LoadOptions)"
    )]
    TooLarge {
        /// Payload bytes present or declared (at least this many).
        len: u64,
        /// The payload limit in force.
        limit: u64,
    },
    /// Not a `.qat8` file.
    #[error("bad magic bytes {found:02x?} (not a .qat8 file)")]
    BadMagic {
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// Written by a newer (or unknown) version of the format.
    #[error(
        "format version {found} is not supported (this build reads versions {OLDEST_READABLE_VERSION} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
    },
    /// Reserved flags were set.
    #[error("header flags {flags:#x} are not supported (must be 0)")]
    UnsupportedFlags {
        /// Flags in the header.
        flags: u32,
    },
    /// The header's payload length disagrees with the file.
    #[error("header declares a {declared}-byte payload but {actual} bytes follow the header")]
    LengthMismatch {
        /// Payload length in the header.
        declared: u64,
        /// Bytes actually present after the header.
        actual: u64,
    },
    /// The payload does not match its checksum (corrupt or truncated file).
    #[error(
        "payload checksum mismatch: header says {stored:#010x}, payload hashes to {computed:#010x}"
    )]
    ChecksumMismatch {
        /// CRC-32 in the header.
        stored: u32,
        /// CRC-32 of the payload.
        computed: u32,
    },
    /// The payload is not a valid bincode encoding of an `Int8Model`.
    #[error("decoding `{section}` (starts at file offset {offset}): {message}")]
    Decode {
        /// The section being decoded: `name`, `tensors[2]`, `ops[5]`, `outputs (count)`, …
        section: String,
        /// File offset (header included) where that section starts.
        offset: usize,
        /// What is wrong (bincode's or the field's description).
        message: String,
    },
    /// The payload has bytes after the encoded model.
    #[error("payload has {trailing} trailing bytes after the model")]
    TrailingBytes {
        /// Unread bytes.
        trailing: usize,
    },
    /// The model decoded but is inconsistent.
    #[error("invalid model: {0}")]
    Invalid(#[from] ValidationError),
}

/// Why a model could not be written.
#[derive(Debug, Error)]
pub enum SaveError {
    /// The model fails [`Int8Model::validate`]; invalid models are never written.
    #[error("refusing to save an invalid model: {0}")]
    Invalid(#[from] ValidationError),
    /// bincode could not encode the model.
    #[error("encoding model: {message}")]
    Encode {
        /// bincode's description.
        message: String,
    },
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

const fn crc32_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32_TABLE: [u32; 256] = crc32_table();

/// CRC-32/ISO-HDLC (reflected polynomial `0xEDB88320`, init and final xor `0xFFFFFFFF`), the
/// checksum of zlib, PNG and gzip.
///
/// ```
/// assert_eq!(qat_int8_runtime::format::crc32(b"123456789"), 0xCBF4_3926);
/// ```
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c = CRC32_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// Wraps `payload` in a `.qat8` header: [`MAGIC`], `version`, the reserved `0u32`, the payload's
/// length (`u64`) and its [`crc32`], all little-endian, then the payload itself.
///
/// ```
/// use qat_int8_runtime::format::{FORMAT_VERSION, HEADER_LEN, MAGIC, crc32, wrap_payload};
/// let bytes = wrap_payload(b"abc", FORMAT_VERSION);
/// assert_eq!(bytes.len(), HEADER_LEN + 3);
/// assert_eq!(&bytes[..8], &MAGIC);
/// assert_eq!(&bytes[16..24], &3u64.to_le_bytes());
/// assert_eq!(&bytes[24..28], &crc32(b"abc").to_le_bytes());
/// ```
pub fn wrap_payload(payload: &[u8], version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Decodes the payload one section at a time, so that an error names the section and offset.
struct Sections<'a> {
    payload: &'a [u8],
    pos: usize,
}

impl<'a> Sections<'a> {
    fn err(&self, section: String, message: String) -> LoadError {
        LoadError::Decode {
            section,
            offset: HEADER_LEN + self.pos,
            message,
        }
    }

    fn one<T: Deserialize<'a>>(
        &mut self,
        section: impl FnOnce() -> String,
    ) -> Result<T, LoadError> {
        let rest = &self.payload[self.pos..];
        match bincode::serde::borrow_decode_from_slice::<T, _>(rest, bincode_config()) {
            Ok((v, used)) => {
                self.pos += used;
                Ok(v)
            }
            Err(e) => Err(self.err(section(), e.to_string())),
        }
    }

    fn seq<T: Deserialize<'a>>(&mut self, section: &str) -> Result<Vec<T>, LoadError> {
        let start = self.pos;
        let count: u64 = self.one(|| format!("{section} (count)"))?;
        let left = self.payload.len() - self.pos;
        if count > left as u64 {
            return Err(LoadError::Decode {
                section: format!("{section} (count)"),
                offset: HEADER_LEN + start,
                message: format!("{count} elements cannot fit in the {left} bytes left"),
            });
        }
        // Every element takes at least one byte: `count` is bounded by the payload.
        let mut v = Vec::with_capacity((count as usize).min(1024));
        for i in 0..count {
            v.push(self.one(|| format!("{section}[{i}]"))?);
        }
        Ok(v)
    }
}

/// Decodes a payload of `version`, returning the model and bytes used.
fn decode_payload(payload: &[u8], version: u32) -> Result<(Int8Model, usize), LoadError> {
    let mut s = Sections { payload, pos: 0 };
    let name: &str = s.one(|| "name".into())?;
    let tensors: Vec<TensorInfo> = s.seq("tensors")?;
    let ops: Vec<Op> = s.seq("ops")?;
    let input = s.one::<u64>(|| "input".into())?;
    let outputs: Vec<u64> = s.seq("outputs")?;
    // Version 1 predates `rounding`: the only rounding its runtimes had.
    let rounding = if version == 1 {
        Target::Tflite
    } else {
        s.one(|| "rounding".into())?
    };
    let index = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let model = Int8Model {
        name: name.to_owned(),
        tensors,
        ops,
        input: index(input),
        outputs: outputs.into_iter().map(index).collect(),
        rounding,
    };
    Ok((model, s.pos))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl Int8Model {
    /// Encodes the model as a `.qat8` byte string (header + checksum + bincode payload).
    /// Validates first: an invalid model is never written.
    ///
    /// ```
    /// # use qat_int8_runtime::{Int8Model, TensorInfo, DType, Op, Target};
    /// # use qat_core::QuantParams;
    /// let q = QuantParams::asymmetric(-1.0, 1.0, 8)?;
    /// let model = Int8Model {
    ///     name: "tiny".into(),
    ///     tensors: vec![
    ///         TensorInfo { name: "x".into(), shape: vec![4], dtype: DType::F32, quant: None },
    ///         TensorInfo { name: "xq".into(), shape: vec![4], dtype: DType::U8, quant: Some(q) },
    ///     ],
    ///     ops: vec![Op::Quantize { input: 0, output: 1 }],
    ///     input: 0,
    ///     outputs: vec![1],
    ///     rounding: Target::Qat,
    /// };
    /// let bytes = model.to_bytes()?;
    /// assert_eq!(Int8Model::from_bytes(&bytes)?, model);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>, SaveError> {
        self.validate()?;
        let payload = bincode::serde::encode_to_vec(self, bincode_config()).map_err(|e| {
            SaveError::Encode {
                message: e.to_string(),
            }
        })?;
        Ok(wrap_payload(&payload, FORMAT_VERSION))
    }

    /// Decodes and validates a `.qat8` byte string (see the [format table](crate::format)) with
    /// the default [`Limits`](crate::limits::Limits). Never panics; returns a [`LoadError`] naming the first problem.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LoadError> {
        Self::from_bytes_with(bytes, &LoadOptions::default())
    }

    /// [`Int8Model::from_bytes`] with explicit [`LoadOptions`]: the payload limit is checked
    /// before the checksum and decoding, the model's [`Int8Model::cost`] after validation.
    ///
    /// ```
    /// # use qat_int8_runtime::{Int8Model, TensorInfo, DType, Op, Target, LoadOptions, LoadError, limits::Limits};
    /// let q = qat_core::QuantParams::asymmetric(-1.0, 1.0, 8)?;
    /// let t = |name: &str, dtype, quant| TensorInfo { name: name.into(), shape: vec![4], dtype, quant };
    /// let bytes = Int8Model {
    ///     name: "q".into(),
    ///     tensors: vec![t("x", DType::F32, None), t("xq", DType::U8, Some(q))],
    ///     ops: vec![Op::Quantize { input: 0, output: 1 }],
    ///     input: 0, outputs: vec![1], rounding: Target::Qat,
    /// }.to_bytes()?;
    /// let tight = LoadOptions { limits: Limits { max_payload_bytes: 8, ..Limits::default() } };
    /// assert!(matches!(Int8Model::from_bytes_with(&bytes, &tight), Err(LoadError::TooLarge { .. })));
    /// assert!(Int8Model::from_bytes_with(&bytes, &LoadOptions::default()).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_bytes_with(bytes: &[u8], opts: &LoadOptions) -> Result<Self, LoadError> {
        let limit = opts.limits.max_payload_bytes;
        if bytes.len() < HEADER_LEN {
            return Err(LoadError::TooShort { len: bytes.len() });
        }
        let actual = (bytes.len() - HEADER_LEN) as u64;
        if actual > limit {
            return Err(LoadError::TooLarge { len: actual, limit });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[..8]);
        if magic != MAGIC {
            return Err(LoadError::BadMagic { found: magic });
        }
        let version = u32_at(bytes, 8);
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(LoadError::UnsupportedVersion { found: version });
        }
        let flags = u32_at(bytes, 12);
        if flags != 0 {
            return Err(LoadError::UnsupportedFlags { flags });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[16..24]);
        let declared = u64::from_le_bytes(len);
        let payload = &bytes[HEADER_LEN..];
        if declared != actual {
            return Err(LoadError::LengthMismatch { declared, actual });
        }
        let stored = u32_at(bytes, 24);
        let computed = crc32(payload);
        if stored != computed {
            return Err(LoadError::ChecksumMismatch { stored, computed });
        }
        let (model, used) = decode_payload(payload, version)?;
        if used != payload.len() {
            return Err(LoadError::TrailingBytes {
                trailing: payload.len() - used,
            });
        }
        model.validate()?;
        model.check_limits(&opts.limits)?;
        Ok(model)
    }

    /// Writes the model to `path` as a `.qat8` file (see [`Int8Model::to_bytes`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), SaveError> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| SaveError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and validates a `.qat8` file with the default [`Limits`](crate::limits::Limits) (see
    /// [`Int8Model::load_with`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Reads and validates a `.qat8` file (see [`Int8Model::from_bytes_with`]). Reads at most
    /// [`HEADER_LEN`] + [`Limits::max_payload_bytes`](crate::limits::Limits::max_payload_bytes) + 1 bytes whatever the file is (a pipe, a
    /// device, a file that grows): more is [`LoadError::TooLarge`].
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self, LoadError> {
        use std::io::Read;
        let path = path.as_ref();
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let limit = opts.limits.max_payload_bytes;
        let cap = limit.saturating_add(HEADER_LEN as u64 + 1);
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(cap)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 >= cap {
            return Err(LoadError::TooLarge {
                len: bytes.len() as u64 - HEADER_LEN as u64,
                limit,
            });
        }
        Self::from_bytes_with(&bytes, opts)
    }
}
