//! Decoding a [`FloatGraph`] from bincode one section at a time (`name`, `nodes (count)`,
//! `nodes[i]`), so that an error names the section and the byte offset where it starts.

use crate::error::GraphError;
use crate::ir::{FloatGraph, Node};

fn err(section: &str, offset: usize, message: impl std::fmt::Display) -> GraphError {
    GraphError::Serde {
        format: "bincode",
        message: format!("decoding `{section}` (starts at byte {offset}): {message}"),
    }
}

fn one<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    pos: &mut usize,
    section: impl FnOnce() -> String,
) -> Result<T, GraphError> {
    match bincode::serde::borrow_decode_from_slice::<T, _>(
        &bytes[*pos..],
        bincode::config::standard(),
    ) {
        Ok((v, used)) => {
            *pos += used;
            Ok(v)
        }
        Err(e) => Err(err(&section(), *pos, e)),
    }
}

/// See [`FloatGraph::from_bincode`].
pub(crate) fn decode(bytes: &[u8]) -> Result<FloatGraph, GraphError> {
    let mut pos = 0;
    let name: &str = one(bytes, &mut pos, || "name".into())?;
    let start = pos;
    let count: u64 = one(bytes, &mut pos, || "nodes (count)".into())?;
    let left = bytes.len() - pos;
    if count > left as u64 {
        return Err(err(
            "nodes (count)",
            start,
            format!("{count} nodes cannot fit in the {left} bytes left"),
        ));
    }
    let mut nodes: Vec<Node> = Vec::with_capacity((count as usize).min(1024));
    for i in 0..count {
        nodes.push(one(bytes, &mut pos, || format!("nodes[{i}]"))?);
    }
    if pos != bytes.len() {
        return Err(err(
            "end",
            pos,
            format!("{} trailing bytes", bytes.len() - pos),
        ));
    }
    Ok(FloatGraph {
        name: name.to_owned(),
        nodes,
    })
}
