//! The safetensors container: an 8-byte little-endian header length, a JSON header
//! (tensor name -> dtype, shape, data_offsets; plus "__metadata__", a string map),
//! then the raw little-endian tensor bytes back to back.
//!
//! The reader treats its input as hostile: every length, offset and field is checked
//! before it is used, and every failure is GACC_ERR_CORRUPT with a message naming
//! what failed.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde_json::{Map, Value};

use crate::status::{gacc_status, Error, Result};

/// Largest JSON header accepted (the header of a million-tensor model fits).
pub(crate) const MAX_HEADER_BYTES: u64 = 256 << 20;

/// One 1-D f32 tensor to write.
pub struct TensorOut<'a> {
    pub name: String,
    pub data: &'a [f32],
}

pub fn corrupt(message: impl Into<String>) -> Error {
    Error::new(gacc_status::GACC_ERR_CORRUPT, message)
}

pub fn io_error(what: &str, err: std::io::Error) -> Error {
    Error::new(gacc_status::GACC_ERR_IO, format!("{what}: {err}"))
}

fn f32_bytes(data: &[f32]) -> impl Iterator<Item = [u8; 4]> + '_ {
    data.iter().map(|v| v.to_le_bytes())
}

/// Writes metadata and tensors in safetensors layout to `out`.
pub fn write(out: &mut impl Write, metadata: &BTreeMap<String, String>, tensors: &[TensorOut<'_>]) -> Result<()> {
    let mut header = Map::new();
    header.insert(
        "__metadata__".to_string(),
        Value::Object(metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()),
    );
    let mut offset = 0usize;
    for t in tensors {
        let end = offset + t.data.len() * 4;
        header.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": [t.data.len()], "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = Value::Object(header).to_string().into_bytes();
    // Pad with spaces so the data starts 8-byte aligned, as the format recommends.
    while !(json.len() + 8).is_multiple_of(8) {
        json.push(b' ');
    }
    let io = |e| io_error("writing the checkpoint", e);
    out.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&json).map_err(io)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for t in tensors {
        for chunk in t.data.chunks(1 << 14) {
            buf.clear();
            f32_bytes(chunk).for_each(|b| buf.extend_from_slice(&b));
            out.write_all(&buf).map_err(io)?;
        }
    }
    Ok(())
}

/// A parsed header: the metadata map and, per tensor name, (element count, byte
/// offset in the data region).
pub struct Header {
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, (usize, u64)>,
    /// Bytes of the data region.
    pub data_len: u64,
}

/// Reads and validates the header; `file_len` is the whole input's length.
pub fn read_header(input: &mut impl Read, file_len: u64) -> Result<Header> {
    let mut len_bytes = [0u8; 8];
    input
        .read_exact(&mut len_bytes)
        .map_err(|_| corrupt("file is shorter than the 8-byte safetensors header length"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || header_len > file_len.saturating_sub(8) {
        return Err(corrupt(format!("header length {header_len} does not fit the file ({file_len} bytes)")));
    }
    let mut json = vec![0u8; header_len as usize];
    input.read_exact(&mut json).map_err(|_| corrupt("file ends inside the JSON header"))?;
    let value: Value = serde_json::from_slice(&json).map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(corrupt("header is not a JSON object"));
    };
    let data_len = file_len - 8 - header_len;
    let mut metadata = BTreeMap::new();
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    let mut tensors = BTreeMap::new();
    for (name, entry) in map {
        if name == "__metadata__" {
            let Value::Object(meta) = entry else {
                return Err(corrupt("__metadata__ is not an object"));
            };
            for (k, v) in meta {
                let Value::String(v) = v else {
                    return Err(corrupt(format!("metadata value of {k:?} is not a string")));
                };
                metadata.insert(k, v);
            }
            continue;
        }
        let dtype = entry.get("dtype").and_then(Value::as_str);
        if dtype != Some("F32") {
            return Err(corrupt(format!("tensor {name:?}: dtype {dtype:?} is not F32")));
        }
        let shape =
            entry.get("shape").and_then(Value::as_array).map(|s| s.iter().map(Value::as_u64).collect::<Vec<_>>());
        let numel = match shape.as_deref() {
            Some([Some(n)]) => *n,
            _ => return Err(corrupt(format!("tensor {name:?}: shape is not [n]"))),
        };
        let offsets = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .map(|s| s.iter().map(Value::as_u64).collect::<Vec<_>>());
        let (begin, end) = match offsets.as_deref() {
            Some([Some(b), Some(e)]) => (*b, *e),
            _ => return Err(corrupt(format!("tensor {name:?}: data_offsets is not [begin, end]"))),
        };
        if begin > end || end > data_len || numel.checked_mul(4) != Some(end - begin) {
            return Err(corrupt(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] do not hold {numel} f32 values inside {data_len} data bytes"
            )));
        }
        let numel = usize::try_from(numel).map_err(|_| corrupt(format!("tensor {name:?} is too large")))?;
        spans.push((begin, end, name.clone()));
        tensors.insert(name, (numel, begin));
    }
    // Tensors must tile the data region exactly: no overlaps, no holes.
    spans.sort();
    let mut cursor = 0;
    for (begin, end, name) in &spans {
        if *begin != cursor {
            return Err(corrupt(format!("tensor {name:?} does not start where the previous one ends")));
        }
        cursor = *end;
    }
    if cursor != data_len {
        return Err(corrupt(format!("tensors cover {cursor} of {data_len} data bytes")));
    }
    Ok(Header { metadata, tensors, data_len })
}

/// Reads `numel` little-endian f32 values.
pub fn read_f32(input: &mut impl Read, numel: usize, what: &str) -> Result<Vec<f32>> {
    let mut out = crate::alloc::try_zeroed::<f32>(numel, what)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut filled = 0;
    while filled < numel {
        let n = (numel - filled).min(buf.len() / 4);
        input.read_exact(&mut buf[..n * 4]).map_err(|_| corrupt(format!("file ends inside tensor {what}")))?;
        for (dst, src) in out[filled..filled + n].iter_mut().zip(buf.chunks_exact(4)) {
            *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
        }
        filled += n;
    }
    Ok(out)
}

/// CRC-32 (IEEE, as zlib.crc32) of the little-endian bytes of `data`.
pub fn crc32_f32(data: &[f32]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in data.chunks(1 << 14) {
        buf.clear();
        f32_bytes(chunk).for_each(|b| buf.extend_from_slice(&b));
        hasher.update(&buf);
    }
    hasher.finalize()
}
