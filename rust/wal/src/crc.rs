//! CRC32C of several records at once.
//!
//! A record's CRC (docs/wal-format.md) is one CRC32C over its header fields
//! and payload. For the small records of a batch the `crc32c` crate runs
//! one chain of `crc32` instructions per record, and each instruction waits
//! for the one before it (latency 3 cycles, throughput 1 per cycle), so two
//! thirds of the unit sit idle. Three records' chains interleaved keep it
//! busy: the same CRCs in about a third of the time.

/// The CRC32C of each of three buffers (as `crc32c::crc32c` gives it).
pub fn crc32c_x3(a: &[u8], b: &[u8], c: &[u8]) -> [u32; 3] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2 (checked just above).
        return unsafe { crc32c_x3_sse42(a, b, c) };
    }
    [crc32c::crc32c(a), crc32c::crc32c(b), crc32c::crc32c(c)]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_x3_sse42(a: &[u8], b: &[u8], c: &[u8]) -> [u32; 3] {
    use std::arch::x86_64::_mm_crc32_u64;
    // The words all three have, interleaved; then each one's rest on its own.
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap());
    let (mut x, mut y, mut z) = (u64::from(u32::MAX), u64::from(u32::MAX), u64::from(u32::MAX));
    let mut words = 0;
    for ((wa, wb), wc) in a.chunks_exact(8).zip(b.chunks_exact(8)).zip(c.chunks_exact(8)) {
        x = _mm_crc32_u64(x, word(wa));
        y = _mm_crc32_u64(y, word(wb));
        z = _mm_crc32_u64(z, word(wc));
        words += 1;
    }
    let done = words * 8;
    // The register holds the CRC before its final inversion; `crc32c_append`
    // takes a finished CRC (inverted) and goes on from it.
    [
        crc32c::crc32c_append(!(x as u32), &a[done..]),
        crc32c::crc32c_append(!(y as u32), &b[done..]),
        crc32c::crc32c_append(!(z as u32), &c[done..]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        // RFC 3720 B.4: 32 bytes of zeros, of 0xff, and ascending.
        let zeros = [0u8; 32];
        let ones = [0xffu8; 32];
        let up: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c_x3(&zeros, &ones, &up), [0x8A91_36AA, 0x62A8_AB43, 0x46DD_794E]);
        assert_eq!(crc32c_x3(b"", b"123456789", b"1"), [0, 0xE306_9283, crc32c::crc32c(b"1")]);
    }

    proptest! {
        #[test]
        fn same_as_one_at_a_time(
            a in proptest::collection::vec(any::<u8>(), 0..600),
            b in proptest::collection::vec(any::<u8>(), 0..600),
            c in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            prop_assert_eq!(crc32c_x3(&a, &b, &c), [crc32c::crc32c(&a), crc32c::crc32c(&b), crc32c::crc32c(&c)]);
        }
    }
}
