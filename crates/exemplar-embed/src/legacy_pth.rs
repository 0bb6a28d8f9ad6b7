//! Reader for PyTorch's legacy (pre-1.6, non-zip) `torch.save` format, which
//! `candle_core::pickle` does not read. The EfficientNet-Lite0 weights we ship by default
//! are in it.
//!
//! Layout of such a file: five pickles back to back (magic number, protocol version,
//! system info, the state dict whose tensors point at storages by key, the list of storage
//! keys), then for each key in that order an `i64` element count and the raw little-endian
//! data. Candle's pickle machine reads each pickle; we read the rest.

use crate::error::{EmbedError, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// `\x80\x02` (protocol 2), `\x8a\x0a` (10-byte long), torch's magic number, `.` (stop).
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];
const LEGACY_PROTOCOL: i64 = 1001;

/// True when `head` (the first bytes of a file) starts a legacy torch file.
pub fn is_legacy_pth(head: &[u8]) -> bool {
    head.starts_with(&MAGIC_PICKLE)
}

fn file_err(path: &Path, reason: impl Into<String>) -> EmbedError {
    EmbedError::WeightsFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads every tensor of a legacy `.pth` state dict, as stored (no dtype conversion).
///
/// Candle's pickle machine and tensor-info parsing can panic on malformed input (a LONG1
/// of more than 8 bytes overflows a shift; a short rebuild tuple is indexed past its end):
/// a damaged weights file is an error to report, not a crash.
pub fn read_legacy_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    std::panic::catch_unwind(|| read_legacy_pth_unguarded(path))
        .unwrap_or_else(|_| Err(file_err(path, "malformed pickle")))
}

fn read_legacy_pth_unguarded(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut reader = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0u8; MAGIC_PICKLE.len()];
    reader.read_exact(&mut magic)?;
    if !is_legacy_pth(&magic) {
        return Err(file_err(path, "not a legacy torch file (bad magic number)"));
    }
    let protocol = read_pickle(&mut reader, path)?;
    match protocol {
        Object::Int(v) if v as i64 == LEGACY_PROTOCOL => {}
        Object::Long(v) if v == LEGACY_PROTOCOL => {}
        other => return Err(file_err(path, format!("unsupported protocol {other:?}"))),
    }
    let _sys_info = read_pickle(&mut reader, path)?;
    let state = read_pickle(&mut reader, path)?;
    let keys = match read_pickle(&mut reader, path)? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| {
                k.unicode()
                    .map_err(|o| file_err(path, format!("bad storage key {o:?}")))
            })
            .collect::<Result<Vec<_>>>()?,
        other => {
            return Err(file_err(
                path,
                format!("expected storage key list, got {other:?}"),
            ))
        }
    };

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let entries = state_entries(state, path)?;
    let infos = entries
        .into_iter()
        .filter_map(|(name, value)| value.into_tensor_info(name, Path::new("")).transpose())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let dtype_of_key: HashMap<String, DType> = infos
        .iter()
        .map(|i| (i.path.trim_start_matches('/').to_string(), i.dtype))
        .collect();
    for key in keys {
        let mut count = [0u8; 8];
        reader.read_exact(&mut count)?;
        let count = i64::from_le_bytes(count);
        let dtype = dtype_of_key.get(&key).copied().unwrap_or(DType::F32);
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(dtype.size_in_bytes()))
            .filter(|len| *len <= 1 << 34)
            .ok_or_else(|| file_err(path, format!("storage {key}: bad size {count}")))?;
        let mut bytes = vec![0u8; len];
        reader.read_exact(&mut bytes)?;
        storages.insert(key, bytes);
    }

    infos
        .into_iter()
        .map(|info| {
            let key = info.path.trim_start_matches('/');
            let storage = storages
                .get(key)
                .ok_or_else(|| file_err(path, format!("{}: storage {key} missing", info.name)))?;
            let elem = info.dtype.size_in_bytes();
            let bytes = gather_strided(
                storage,
                info.layout.dims(),
                info.layout.stride(),
                info.layout.start_offset() / elem,
                elem,
            )
            .ok_or_else(|| file_err(path, format!("{}: storage too short", info.name)))?;
            let tensor =
                Tensor::from_raw_buffer(&bytes, info.dtype, info.layout.dims(), &Device::Cpu)?;
            Ok((info.name, tensor))
        })
        .collect()
}

fn read_pickle<R: BufRead>(reader: &mut R, path: &Path) -> Result<Object> {
    let mut stack = Stack::empty();
    stack
        .read_loop(reader)
        .map_err(|e| file_err(path, format!("pickle: {e}")))?;
    Ok(stack.finalize()?)
}

/// The (name, tensor object) pairs of a pickled state dict, an `OrderedDict` possibly
/// carrying a `_metadata` attribute, or wrapped as `{"state_dict": ...}`.
fn state_entries(state: Object, path: &Path) -> Result<Vec<(Object, Object)>> {
    let entries = match state {
        Object::Dict(entries) => entries,
        Object::Build { callable, .. } => match *callable {
            Object::Dict(entries) => entries,
            other => return Err(file_err(path, format!("unexpected state object {other:?}"))),
        },
        other => return Err(file_err(path, format!("unexpected state object {other:?}"))),
    };
    let nested = entries
        .iter()
        .position(|(k, _)| matches!(k, Object::Unicode(s) if s == "state_dict"));
    match nested {
        Some(i) => state_entries(entries.into_iter().nth(i).expect("index").1, path),
        None => Ok(entries),
    }
}

/// Copies the elements of a strided view (`dims`, `strides` and `offset` in elements)
/// out of `storage` into contiguous row-major bytes; None if the view overruns it.
/// Checkpoints store some tensors transposed (e.g. a classifier saved as `W.t()`).
fn gather_strided(
    storage: &[u8],
    dims: &[usize],
    strides: &[usize],
    offset: usize,
    elem: usize,
) -> Option<Vec<u8>> {
    let count: usize = dims.iter().product();
    let contiguous = dims
        .iter()
        .rev()
        .zip(strides.iter().rev())
        .scan(1usize, |expected, (d, s)| {
            let ok = *d == 1 || *s == *expected;
            *expected *= d;
            Some(ok)
        })
        .all(|ok| ok);
    if contiguous {
        return storage
            .get(offset * elem..(offset + count) * elem)
            .map(<[u8]>::to_vec);
    }
    let mut out = Vec::with_capacity(count * elem);
    let mut index = vec![0usize; dims.len()];
    for _ in 0..count {
        let at = offset + index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(storage.get(at * elem..(at + 1) * elem)?);
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            if index[d] < dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_are_gathered_in_row_major_order() {
        // Storage holds a 2x3 matrix [[0,1,2],[3,4,5]]; its transpose is a (3,2) view with
        // strides (1,3).
        let storage: Vec<u8> = (0u8..6).collect();
        assert_eq!(
            gather_strided(&storage, &[3, 2], &[1, 3], 0, 1).unwrap(),
            vec![0, 3, 1, 4, 2, 5]
        );
        assert_eq!(
            gather_strided(&storage, &[2, 3], &[3, 1], 0, 1).unwrap(),
            storage
        );
        assert_eq!(
            gather_strided(&storage, &[2], &[1], 4, 1).unwrap(),
            vec![4, 5]
        );
        assert!(gather_strided(&storage, &[2, 3], &[3, 1], 1, 1).is_none());
    }

    #[test]
    fn files_without_the_magic_number_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pth");
        std::fs::write(
            &path,
            [0x80, 0x02, 0x8a, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x2e],
        )
        .unwrap();
        let err = read_legacy_pth(&path).unwrap_err().to_string();
        assert!(err.contains("bad magic number"), "{err}");
    }

    /// Found by the `legacy_pth` fuzz target: a 9-byte LONG1 in the protocol pickle.
    #[test]
    fn a_malformed_pickle_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pth");
        let mut bytes = MAGIC_PICKLE.to_vec();
        bytes.extend_from_slice(&[0x80, 0x02, 0x8a, 0x09, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x2e]);
        std::fs::write(&path, bytes).unwrap();
        let err = read_legacy_pth(&path).unwrap_err().to_string();
        assert!(err.contains("malformed pickle"), "{err}");
    }

    /// Inputs the `legacy_pth` fuzz target crashed on before the reader contained
    /// Candle's panics (an overflowing LONG1, short tensor-rebuild tuples).
    #[test]
    fn fuzzer_found_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (i, bytes) in [
            include_bytes!("testdata/pth-012d05e89618.seed").as_slice(),
            include_bytes!("testdata/pth-349d1b747429.seed").as_slice(),
            include_bytes!("testdata/pth-9e22503106b0.seed").as_slice(),
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("{i}.pth"));
            std::fs::write(&path, bytes).unwrap();
            assert!(read_legacy_pth(&path).is_err(), "input {i}");
        }
    }
}
