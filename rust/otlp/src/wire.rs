//! The protobuf wire format, read in place: tags, varints, fixed-width and
//! length-delimited fields, borrowed from the input without copying.
//!
//! Every read is bounds-checked and returns an error instead of panicking.
//! Unknown fields are skipped (groups included, nested at most
//! `MAX_DEPTH` deep); a known field with the wrong wire type is an error, as
//! in prost.

use crate::error::{DecodeError, Result};

/// Deepest nesting accepted, for groups and for AnyValue arrays/kvlists.
pub const MAX_DEPTH: u32 = 64;

/// One field's payload.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    fn wire_name(&self) -> &'static str {
        match self {
            Value::Varint(_) => "varint",
            Value::Fixed64(_) => "fixed64",
            Value::Bytes(_) => "length-delimited",
            Value::Fixed32(_) => "fixed32",
        }
    }

    fn mismatch(&self, want: &str) -> DecodeError {
        DecodeError::new(format!("wrong wire type: expected {want}, got {}", self.wire_name()))
    }

    #[inline]
    pub fn varint(self) -> Result<u64> {
        match self {
            Value::Varint(v) => Ok(v),
            other => Err(other.mismatch("varint")),
        }
    }

    /// int32 and enums: proto3 truncates the varint to 32 bits.
    #[inline]
    pub fn int32(self) -> Result<i32> {
        Ok(self.varint()? as i32)
    }

    #[inline]
    pub fn uint32(self) -> Result<u32> {
        Ok(self.varint()? as u32)
    }

    #[inline]
    pub fn int64(self) -> Result<i64> {
        Ok(self.varint()? as i64)
    }

    #[inline]
    pub fn sint32(self) -> Result<i32> {
        let v = self.varint()? as u32;
        Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
    }

    #[inline]
    pub fn boolean(self) -> Result<bool> {
        Ok(self.varint()? != 0)
    }

    #[inline]
    pub fn fixed64(self) -> Result<u64> {
        match self {
            Value::Fixed64(v) => Ok(v),
            other => Err(other.mismatch("fixed64")),
        }
    }

    #[inline]
    pub fn double(self) -> Result<f64> {
        Ok(f64::from_bits(self.fixed64()?))
    }

    #[inline]
    pub fn fixed32(self) -> Result<u32> {
        match self {
            Value::Fixed32(v) => Ok(v),
            other => Err(other.mismatch("fixed32")),
        }
    }

    #[inline]
    pub fn bytes(self) -> Result<&'a [u8]> {
        match self {
            Value::Bytes(b) => Ok(b),
            other => Err(other.mismatch("length-delimited")),
        }
    }

    /// A `string` field: length-delimited and valid UTF-8.
    #[inline]
    pub fn string(self) -> Result<&'a str> {
        utf8(self.bytes()?)
    }

    /// Appends a `repeated fixed64`/`double` element, packed or not.
    pub fn push_fixed64s(self, out: &mut Vec<u64>) -> Result<()> {
        match self {
            Value::Fixed64(v) => out.push(v),
            Value::Bytes(b) => {
                if b.len() % 8 != 0 {
                    return Err(DecodeError::new(format!(
                        "packed fixed64 field has {} bytes, not a multiple of 8",
                        b.len()
                    )));
                }
                out.extend(
                    b.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
                );
            }
            other => return Err(other.mismatch("fixed64 or packed")),
        }
        Ok(())
    }

    /// Appends a `repeated uint64` element, packed or not.
    pub fn push_varints(self, out: &mut Vec<u64>) -> Result<()> {
        match self {
            Value::Varint(v) => out.push(v),
            Value::Bytes(b) => {
                let mut r = Reader::new(b);
                while !r.at_end() {
                    out.push(r.varint()?);
                }
            }
            other => return Err(other.mismatch("varint or packed")),
        }
        Ok(())
    }
}

/// `b` as a `str`, or the error naming the first invalid byte.
///
/// Most OTLP strings (keys, names, URLs) are short and ASCII, where
/// `std::str::from_utf8` goes byte by byte; checking eight bytes at a time
/// for a high bit first is several times faster and falls back to the full
/// validation only for non-ASCII input.
#[inline]
pub fn utf8(b: &[u8]) -> Result<&str> {
    if is_ascii(b) {
        // SAFETY: every byte is below 0x80 (checked just above), and ASCII is valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(b) });
    }
    utf8_slow(b)
}

#[inline(never)]
fn utf8_slow(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b)
        .map_err(|e| DecodeError::new(format!("invalid UTF-8 in string field at byte {}", e.valid_up_to())))
}

/// True when no byte has its high bit set. Reads eight bytes at a time (the
/// last word overlapping the previous one) so a short string costs a few
/// instructions rather than one branch per byte.
#[inline]
fn is_ascii(b: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let n = b.len();
    if n >= 8 {
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0x80; 8]));
        let mut acc = word(n - 8);
        let mut i = 0;
        while i + 8 <= n {
            acc |= word(i);
            i += 8;
        }
        acc & HIGH == 0
    } else if n >= 4 {
        let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0x80; 4]));
        (word(0) | word(n - 4)) & 0x8080_8080 == 0
    } else {
        b.iter().all(|&x| x < 0x80)
    }
}

fn in_field(e: DecodeError, field: u32) -> DecodeError {
    DecodeError::new(format!("{} (field {field})", e.message()))
}

/// A cursor over one message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64> {
        // fast path: one byte (tags, small lengths)
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64> {
        let buf = self.buf;
        let mut result: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = buf.get(self.pos) else {
                return Err(DecodeError::new("truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(DecodeError::new("varint overflows 64 bits"));
            }
            result |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(result);
            }
            shift += 7;
            if shift > 63 {
                return Err(DecodeError::new("varint longer than 10 bytes"));
            }
        }
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(DecodeError::new(format!("truncated: field needs {n} bytes, {left} left")));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next field as (field number, value), skipping groups; `None` at
    /// the end of the message. (Not an `Iterator`: it returns `Result<Option<_>>`.)
    #[allow(clippy::should_implement_trait)]
    #[inline(always)]
    pub fn next(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        loop {
            if self.at_end() {
                return Ok(None);
            }
            let (field, wt) = self.tag()?;
            match wt {
                3 => self.skip_group(field, 1)?,
                4 => return Err(DecodeError::new(format!("unexpected end-group tag (field {field})"))),
                _ => return Ok(Some((field, self.value(field, wt)?))),
            }
        }
    }

    /// The next field if its tag is the single byte `tag` (a field number
    /// below 16), else `None` without moving: for the runs of a repeated
    /// field (attributes), which then skip the general dispatch. Reads the
    /// value exactly as `next` does (same checks, same errors).
    #[inline(always)]
    pub fn next_if_tag(&mut self, tag: u8) -> Result<Option<Value<'a>>> {
        debug_assert!(tag < 0x80 && tag >> 3 != 0 && tag & 7 != 3 && tag & 7 != 4);
        if self.buf.get(self.pos) != Some(&tag) {
            return Ok(None);
        }
        self.pos += 1;
        Ok(Some(self.value(u32::from(tag >> 3), tag & 7)?))
    }

    /// The value after a tag of wire type `wt` (0, 1, 2 or 5; groups are the
    /// caller's business), shared by `next` and `next_if_tag` so both read and
    /// check values the same way.
    #[inline(always)]
    fn value(&mut self, field: u32, wt: u8) -> Result<Value<'a>> {
        Ok(match wt {
            0 => Value::Varint(self.varint()?),
            1 => {
                let b = self.take(8).map_err(|e| in_field(e, field))?;
                Value::Fixed64(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| DecodeError::new("length prefix too large"))?;
                Value::Bytes(self.take(len).map_err(|e| in_field(e, field))?)
            }
            5 => {
                let b = self.take(4).map_err(|e| in_field(e, field))?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => return Err(DecodeError::new(format!("invalid wire type {wt} (field {field})"))),
        })
    }

    #[inline(always)]
    fn tag(&mut self) -> Result<(u32, u8)> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(DecodeError::new("field tag out of range"));
        }
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(DecodeError::new("field number 0 is invalid"));
        }
        Ok((field, (key & 7) as u8))
    }

    /// Skips a (deprecated) group up to its matching end-group tag.
    fn skip_group(&mut self, field: u32, depth: u32) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::new("groups nested too deeply"));
        }
        loop {
            if self.at_end() {
                return Err(DecodeError::new(format!("unterminated group (field {field})")));
            }
            let (f, wt) = self.tag()?;
            match wt {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let len = self.varint()?;
                    let len = usize::try_from(len).map_err(|_| DecodeError::new("length prefix too large"))?;
                    self.take(len)?;
                }
                3 => self.skip_group(f, depth + 1)?,
                4 => {
                    if f != field {
                        return Err(DecodeError::new(format!("end-group tag for field {f} inside group {field}")));
                    }
                    return Ok(());
                }
                5 => {
                    self.take(4)?;
                }
                _ => return Err(DecodeError::new(format!("invalid wire type {wt} (field {f})"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut r = Reader::new(&[0x96, 0x01]);
        assert_eq!(r.varint().unwrap(), 150);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&max).varint().unwrap(), u64::MAX);
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn fields_and_groups() {
        // field 1 varint 5, group 2 { field 3 varint 1 }, field 4 "ab"
        let buf = [0x08, 0x05, 0x13, 0x18, 0x01, 0x14, 0x22, 0x02, b'a', b'b'];
        let mut r = Reader::new(&buf);
        let (f, v) = r.next().unwrap().unwrap();
        assert_eq!((f, v.varint().unwrap()), (1, 5));
        let (f, v) = r.next().unwrap().unwrap();
        assert_eq!((f, v.string().unwrap()), (4, "ab"));
        assert!(r.next().unwrap().is_none());
    }

    #[test]
    fn errors() {
        assert!(Reader::new(&[0x0a, 0x05, b'a']).next().unwrap_err().to_string().contains("truncated"));
        assert!(Reader::new(&[0x0f]).next().unwrap_err().to_string().contains("wire type 7"));
        assert!(Reader::new(&[0x00]).next().unwrap_err().to_string().contains("field number 0"));
        assert!(Reader::new(&[0x13, 0x08]).next().is_err());
        assert!(Reader::new(&[0x0c]).next().is_err());
        let bad = [0x0a, 0x01, 0xff];
        let v = Reader::new(&bad).next().unwrap().unwrap().1;
        assert!(v.string().unwrap_err().to_string().contains("UTF-8"));
        assert!(Value::Varint(1).fixed64().unwrap_err().to_string().contains("wrong wire type"));
    }

    #[test]
    fn ascii_fast_path() {
        let mut s = String::new();
        for n in 0..40 {
            assert!(is_ascii(s.as_bytes()));
            assert_eq!(utf8(s.as_bytes()).unwrap(), s);
            // a non-ASCII byte at every position is seen
            for i in 0..n {
                let mut b = s.clone().into_bytes();
                b[i] = 0xc3;
                assert!(!is_ascii(&b), "n={n} i={i}");
                let mut ok = s.clone().into_bytes();
                ok.splice(i..i + 1, "é".bytes());
                assert_eq!(utf8(&ok).unwrap(), std::str::from_utf8(&ok).unwrap());
            }
            s.push((b'a' + (n % 26) as u8) as char);
        }
        assert!(utf8(b"ab\xffcdefghij").unwrap_err().to_string().contains("at byte 2"));
    }

    #[test]
    fn next_if_tag_reads_like_next() {
        // field 9 "ab", field 9 "c", field 1 varint 5, field 9 truncated
        let buf = [0x4a, 0x02, b'a', b'b', 0x4a, 0x01, b'c', 0x08, 0x05, 0x4a, 0x03, b'x'];
        let mut r = Reader::new(&buf);
        assert_eq!(r.next_if_tag(0x4a).unwrap().unwrap().bytes().unwrap(), b"ab");
        assert_eq!(r.next_if_tag(0x4a).unwrap().unwrap().bytes().unwrap(), b"c");
        assert!(r.next_if_tag(0x4a).unwrap().is_none()); // not moved
        let (f, v) = r.next().unwrap().unwrap();
        assert_eq!((f, v.varint().unwrap()), (1, 5));
        let mut r2 = Reader { buf: &buf, pos: r.pos };
        assert_eq!(r.next_if_tag(0x4a).unwrap_err(), r2.next().unwrap_err());
        let fixed = [0x0d, 1, 0, 0, 0, 0x11, 2, 0, 0, 0, 0, 0, 0, 0];
        let mut r = Reader::new(&fixed);
        assert_eq!(r.next_if_tag(0x0d).unwrap().unwrap().fixed32().unwrap(), 1);
        assert_eq!(r.next_if_tag(0x11).unwrap().unwrap().fixed64().unwrap(), 2);
        assert!(r.at_end());
    }

    #[test]
    fn sint32_zigzag() {
        assert_eq!(Value::Varint(0).sint32().unwrap(), 0);
        assert_eq!(Value::Varint(1).sint32().unwrap(), -1);
        assert_eq!(Value::Varint(2).sint32().unwrap(), 1);
        assert_eq!(Value::Varint(4294967295).sint32().unwrap(), i32::MIN);
    }
}
