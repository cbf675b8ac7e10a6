//! `metadata.json`: the WAL's checkpoint of what consumers have processed.
//!
//! It is advisory for everything but the processed marks: segments are the
//! truth for entries, and a lost or damaged metadata file only means entries
//! are replayed again (at-least-once). The file carries a CRC32C of its own
//! content so that a flipped digit cannot silently mark entries processed:
//!
//! ```json
//! {"checksum":"crc32c:1a2b3c4d","metadata":{"format_version":1,"next_id":...}}
//! ```
//!
//! The checksum covers the compact JSON serialization (keys sorted) of the
//! `metadata` object. Written with `fsutil::write_atomic`: temp file, fsync,
//! rename, fsync directory.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil;

pub const METADATA_FILE: &str = "metadata.json";
/// The layout of this file. Its own number, not the segments' (`format::FORMAT_VERSION`):
/// segment format 2 left this file unchanged, and a checkpoint written before it must
/// still count after an upgrade (refusing it would replay every entry).
pub const METADATA_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub index: u64,
    pub first_id: Option<u64>,
    pub last_id: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub format_version: u32,
    /// The id the next appended entry gets (at least).
    pub next_id: u64,
    /// Every entry with an id at or below this is processed.
    pub processed_watermark: u64,
    /// Processed ids above the watermark, ascending.
    pub processed_ids: Vec<u64>,
    pub segments: Vec<SegmentMeta>,
    /// RFC 3339 time of the last fsync of entries, if any.
    pub last_flush: Option<String>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            format_version: METADATA_FORMAT_VERSION,
            next_id: 1,
            processed_watermark: 0,
            processed_ids: Vec::new(),
            segments: Vec::new(),
            last_flush: None,
        }
    }
}

/// Why a metadata file was not used.
#[derive(Debug)]
pub enum LoadError {
    Io(io::Error),
    Invalid(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Io(e) => write!(f, "{e}"),
            LoadError::Invalid(m) => f.write_str(m),
        }
    }
}

fn checksum_of(body: &serde_json::Value) -> String {
    format!("crc32c:{:08x}", crc32c::crc32c(body.to_string().as_bytes()))
}

pub fn encode(meta: &Metadata) -> Vec<u8> {
    let body = serde_json::to_value(meta).expect("metadata serializes");
    let doc = serde_json::json!({ "checksum": checksum_of(&body), "metadata": body });
    let mut out = doc.to_string().into_bytes();
    out.push(b'\n');
    out
}

pub fn decode(bytes: &[u8]) -> Result<Metadata, LoadError> {
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| LoadError::Invalid(format!("not JSON: {e}")))?;
    let body = doc.get("metadata").ok_or_else(|| LoadError::Invalid("no \"metadata\" object".into()))?;
    let stored = doc.get("checksum").and_then(|c| c.as_str()).unwrap_or("");
    let expected = checksum_of(body);
    if stored != expected {
        return Err(LoadError::Invalid(format!("checksum mismatch (stored {stored:?}, computed {expected:?})")));
    }
    let meta: Metadata =
        serde_json::from_value(body.clone()).map_err(|e| LoadError::Invalid(format!("bad fields: {e}")))?;
    ids_in_range(&meta)?;
    if meta.format_version != METADATA_FORMAT_VERSION {
        let expected = METADATA_FORMAT_VERSION;
        return Err(LoadError::Invalid(format!("format version {} is not {expected}", meta.format_version)));
    }
    Ok(meta)
}

/// Rejects a checkpoint whose ids no WAL could have written: ids are below
/// `MAX_ID` (so `next_id` is at most `MAX_ID`), the watermark is below `next_id`,
/// and no processed mark lies at or above `MAX_ID`. A checksum-valid file with
/// such ids was crafted or written by a broken program; trusting it would mark
/// entries processed that are not (or ask for ids past the end of the id space).
fn ids_in_range(meta: &Metadata) -> Result<(), LoadError> {
    let max = crate::format::MAX_ID;
    if meta.next_id == 0 || meta.next_id > max {
        return Err(LoadError::Invalid(format!("next_id {} is out of range", meta.next_id)));
    }
    if meta.processed_watermark >= max {
        return Err(LoadError::Invalid(format!("processed_watermark {} is out of range", meta.processed_watermark)));
    }
    if let Some(bad) = meta.processed_ids.iter().find(|&&id| id == 0 || id >= max) {
        return Err(LoadError::Invalid(format!("processed id {bad} is out of range")));
    }
    Ok(())
}

/// Reads `<dir>/metadata.json`; `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<Metadata>, LoadError> {
    match std::fs::read(dir.join(METADATA_FILE)) {
        Ok(bytes) => decode(&bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoadError::Io(e)),
    }
}

/// Durably replaces `<dir>/metadata.json`.
pub fn store(dir: &Path, meta: &Metadata) -> io::Result<()> {
    fsutil::write_atomic(&dir.join(METADATA_FILE), &encode(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        Metadata {
            next_id: 1001,
            processed_watermark: 500,
            processed_ids: vec![502, 777],
            segments: vec![SegmentMeta { index: 3, first_id: Some(400), last_id: Some(1000) }],
            last_flush: Some("2026-11-23T21:00:00.000000Z".into()),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        store(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(METADATA_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn ids_outside_the_id_space_are_rejected() {
        let max = crate::format::MAX_ID;
        let bad = [
            Metadata { next_id: max + 1, ..sample() },
            Metadata { next_id: 0, ..sample() },
            Metadata { processed_watermark: max, next_id: max, ..sample() },
            Metadata { processed_ids: vec![502, max], ..sample() },
            Metadata { processed_ids: vec![0], ..sample() },
        ];
        for m in bad {
            let err = decode(&encode(&m)).expect_err("out-of-range checkpoint accepted");
            assert!(matches!(err, LoadError::Invalid(ref why) if why.contains("out of range")), "{err}");
        }
        // The top of the id space itself is fine: no id is left to hand out.
        let top = Metadata { next_id: max, processed_watermark: max - 1, processed_ids: vec![], ..sample() };
        assert_eq!(decode(&encode(&top)).unwrap(), top);
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() - 1 {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            if let Ok(m) = decode(&bad) {
                // Only a flip that leaves the JSON meaning intact may pass.
                assert_eq!(m, sample(), "flip at {i} changed the metadata undetected");
            }
        }
    }
}
