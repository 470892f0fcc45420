//! Constants of an ONNX graph (initializers and `Constant` nodes) and node attributes, decoded
//! with bounds: an element count is a checked product of the dims and must equal the stored data.

use super::super::proto::{AttributeProto, NodeProto, TensorProto, tensor_proto::DataType};

/// The values of a constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Data {
    /// `FLOAT` (and `DOUBLE`, rounded to f32 once).
    F32(Vec<f32>),
    /// `INT64` / `INT32` (shapes, axes, flags).
    I64(Vec<i64>),
}

/// A constant tensor: dims and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Const {
    pub dims: Vec<usize>,
    pub data: Data,
}

impl Const {
    /// The values as f32 (integers converted).
    pub fn f32s(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as i64, or `None` for a float tensor.
    pub fn i64s(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            Data::F32(_) => None,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }
}

/// Decodes `t`, refusing more than `max_elements` values. The error is a reason in words.
pub(super) fn decode(t: &TensorProto, max_elements: usize) -> Result<Const, String> {
    if !t.external_data.is_empty() || t.data_location == Some(1) {
        return Err("stored in an external data file (only embedded tensors are read)".into());
    }
    if t.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    let mut n: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| format!("negative dimension {d}"))?;
        n = n
            .checked_mul(d)
            .filter(|&n| n <= max_elements)
            .ok_or_else(|| {
                format!(
                    "dims {:?} exceed the limit of {max_elements} elements",
                    t.dims
                )
            })?;
        dims.push(d);
    }
    let raw = t.raw_data.as_deref();
    let dtype = t.data_type.unwrap_or(0);
    let check = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(format!(
                "dims {:?} say {n} elements, the data holds {len}",
                t.dims
            ))
        }
    };
    // Each element type: the raw little-endian bytes, or the typed field, converted.
    let data = if dtype == DataType::Float as i32 {
        let v = read(raw, n, f32::from_le_bytes, || t.float_data.clone())?;
        check(v.len())?;
        Data::F32(v)
    } else if dtype == DataType::Double as i32 {
        let from_raw = |b| f64::from_le_bytes(b) as f32;
        let v = read(raw, n, from_raw, || {
            t.double_data.iter().map(|&x| x as f32).collect()
        })?;
        check(v.len())?;
        Data::F32(v)
    } else if dtype == DataType::Int64 as i32 {
        let v = read(raw, n, i64::from_le_bytes, || t.int64_data.clone())?;
        check(v.len())?;
        Data::I64(v)
    } else if dtype == DataType::Int32 as i32 {
        let from_raw = |b| i64::from(i32::from_le_bytes(b));
        let v = read(raw, n, from_raw, || {
            t.int32_data.iter().map(|&x| i64::from(x)).collect()
        })?;
        check(v.len())?;
        Data::I64(v)
    } else if dtype == DataType::Bool as i32 {
        let v: Vec<i64> = match raw {
            Some(r) => r.iter().map(|&b| i64::from(b != 0)).collect(),
            None => t.int32_data.iter().map(|&x| i64::from(x != 0)).collect(),
        };
        check(v.len())?;
        Data::I64(v)
    } else {
        let name = DataType::try_from(dtype)
            .map(|d| d.as_str_name().to_string())
            .unwrap_or_else(|_| dtype.to_string());
        return Err(format!(
            "element type {name} (float, double, int32, int64 and bool are read)"
        ));
    };
    Ok(Const { dims, data })
}

/// `raw` as `n` little-endian chunks of `B` bytes, or an error when the length differs.
/// The `n` elements of a tensor: from its raw little-endian bytes (`B` each) when it has them,
/// else from its typed field, `typed()`.
fn read<const B: usize, T>(
    raw: Option<&[u8]>,
    n: usize,
    from_raw: impl Fn([u8; B]) -> T,
    typed: impl FnOnce() -> Vec<T>,
) -> Result<Vec<T>, String> {
    match raw {
        Some(r) => Ok(le_chunks::<B>(r, n)?.map(from_raw).collect()),
        None => Ok(typed()),
    }
}

fn le_chunks<const B: usize>(
    raw: &[u8],
    n: usize,
) -> Result<impl Iterator<Item = [u8; B]> + '_, String> {
    if raw.len() != n.saturating_mul(B) {
        return Err(format!(
            "raw data holds {} bytes, {n} elements of {B} bytes need {}",
            raw.len(),
            n.saturating_mul(B)
        ));
    }
    Ok(raw
        .chunks_exact(B)
        .map(|c| <[u8; B]>::try_from(c).unwrap_or([0; B])))
}

/// A node's attributes, looked up by name.
pub(super) struct Attrs<'a>(&'a NodeProto);

impl<'a> Attrs<'a> {
    pub fn of(node: &'a NodeProto) -> Self {
        Self(node)
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.0
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }

    /// An `INT` attribute, or `default`.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).and_then(|a| a.i).unwrap_or(default)
    }

    /// A `FLOAT` attribute, or `default`.
    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).and_then(|a| a.f).unwrap_or(default)
    }

    /// An `INTS` attribute, if present.
    pub fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.get(name).map(|a| a.ints.as_slice())
    }

    /// A `STRING` attribute, if present (lossy UTF-8).
    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(|a| a.s.as_deref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }

    /// A `TENSOR` attribute, if present.
    pub fn tensor(&self, name: &str) -> Option<&'a TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }

    /// Attribute names present on the node.
    pub fn names(&self) -> impl Iterator<Item = &'a str> {
        self.0.attribute.iter().filter_map(|a| a.name.as_deref())
    }
}

/// `INTS` attribute as `N` non-negative values (or `default` when absent).
pub(super) fn usizes<const N: usize>(
    attrs: &Attrs<'_>,
    name: &str,
    default: [usize; N],
) -> Result<[usize; N], String> {
    let Some(v) = attrs.ints(name) else {
        return Ok(default);
    };
    if v.len() != N {
        return Err(format!("{name} has {} values, expected {N}", v.len()));
    }
    let mut out = [0usize; N];
    for (o, &x) in out.iter_mut().zip(v) {
        *o = usize::try_from(x).map_err(|_| format!("{name} = {v:?} has a negative value"))?;
    }
    Ok(out)
}
