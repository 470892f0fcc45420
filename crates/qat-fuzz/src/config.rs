//! The pipeline configuration target: TOML text → `xtask::config::Config::parse` (which also
//! validates every range). A rejection must be a typed [`ConfigError`] that locates itself: a
//! parse error's line and column lie inside the text.
//!
//! Structure-aware mutations decode the TOML into a table, edit one key or value (a mistyped or
//! unknown key, a value of another type, a boundary number, a removed key or table) and encode it
//! again; line-level ones delete, duplicate or swap lines, as a hand edit would.

use std::path::Path;

use toml::{Table, Value};
use xtask::config::{Config, ConfigError};

use crate::mutate::BOUNDARY;
use crate::rng::Rng;
use crate::targets::BUG;

/// The shipped configurations.
pub const SEEDS: [&str; 2] = [
    include_str!("../../../configs/default.toml"),
    include_str!("../../../configs/fashion-mnist.toml"),
];

/// One case: parse and validate `bytes` as a configuration.
pub fn run(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(_) => Ok(()),
        Err(e @ ConfigError::Parse { line, column, .. }) => {
            let lines = text.lines().count() + 1;
            let width = text.lines().map(|l| l.chars().count()).max().unwrap_or(0) + 2;
            if line > lines || column > width {
                return Err(format!("{BUG}error outside the text ({lines} lines): {e}"));
            }
            Err(e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Number of keys in `t`, tables included.
fn count(t: &Table) -> usize {
    t.values()
        .map(|v| match v {
            Value::Table(s) => 1 + count(s),
            _ => 1,
        })
        .sum()
}

/// Applies one edit to the `k`-th key of `t` (depth first); `true` once done.
fn edit(rng: &mut Rng, t: &mut Table, k: &mut usize) -> bool {
    let keys: Vec<String> = t.keys().cloned().collect();
    for key in keys {
        if *k == 0 {
            edit_key(rng, t, &key);
            return true;
        }
        *k -= 1;
        if let Some(Value::Table(s)) = t.get_mut(&key)
            && edit(rng, s, k)
        {
            return true;
        }
    }
    false
}

fn edit_key(rng: &mut Rng, t: &mut Table, key: &str) {
    match rng.below(4) {
        // A mistyped or unknown key: one character changed, dropped or doubled.
        0 => {
            if let Some(v) = t.remove(key) {
                let mut chars: Vec<char> = key.chars().collect();
                let i = rng.below(chars.len().max(1));
                match rng.below(3) {
                    0 if !chars.is_empty() => {
                        chars.remove(i);
                    }
                    1 if !chars.is_empty() => chars.insert(i, chars[i]),
                    _ => chars.insert(i, *rng.pick(&['_', 'x', 's', '1'])),
                }
                t.insert(chars.into_iter().collect(), v);
            }
        }
        1 => {
            t.remove(key);
        }
        _ => {
            if let Some(v) = t.get_mut(key) {
                *v = other_value(rng, v);
            }
        }
    }
}

/// A value of another type, or a boundary value of the same type.
fn other_value(rng: &mut Rng, v: &Value) -> Value {
    match rng.below(8) {
        0 => Value::Integer(*rng.pick(&BOUNDARY) as i64),
        1 => Value::Integer(-(rng.below(3) as i64) - 1),
        2 => Value::Float(*rng.pick(&[
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e308,
            -0.0,
            1e-320,
            0.5,
        ])),
        3 => Value::String(match v {
            Value::String(s) => format!("{s}{s}"),
            other => other.to_string(),
        }),
        4 => Value::Boolean(rng.one_in(2)),
        5 => Value::Array(vec![v.clone(); rng.below(3)]),
        6 => match v {
            Value::Integer(i) => Value::Integer(i.wrapping_add(rng.below(5) as i64 - 2)),
            Value::Float(f) => Value::Float(f * 2f64.powi(rng.below(64) as i32 - 32)),
            _ => Value::Table(Table::new()),
        },
        _ => Value::Table(Table::new()),
    }
}

/// Line-level edits of the text: delete, duplicate or swap lines.
fn lines(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return text.to_string();
    }
    let i = rng.below(lines.len());
    match rng.below(3) {
        0 => {
            lines.remove(i);
        }
        1 => lines.insert(i, lines[rng.below(lines.len())]),
        _ => {
            let j = rng.below(lines.len());
            lines.swap(i, j);
        }
    }
    lines.join("\n")
}

/// A structure-aware mutant of configuration text `base`, or `None` when it is not TOML.
pub fn mutate(rng: &mut Rng, base: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(base).ok()?;
    if rng.one_in(3) {
        return Some(lines(rng, text).into_bytes());
    }
    let mut t: Table = toml::from_str(text).ok()?;
    for _ in 0..1 + rng.below(2) {
        let n = count(&t);
        if n == 0 {
            break;
        }
        let mut k = rng.below(n);
        edit(rng, &mut t, &mut k);
    }
    toml::to_string(&t).ok().map(String::into_bytes)
}
