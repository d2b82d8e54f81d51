//! A minimal, bounds-checked reader for the ZIP container that `torch.save` writes.
//!
//! It parses the end-of-central-directory record (and the ZIP64 records that torch writes for
//! large archives), the central directory and each entry's local header, and reports where each
//! entry's data lies inside the byte slice. Nothing is decompressed or copied: the checkpoint code
//! memory-maps the file and slices tensor data directly, so only STORED (method 0) entries can be
//! read as data ([`ZipEntry::stored_data`]); torch writes all entries that way.
//!
//! Every offset and length read from the file is checked against the slice before use; malformed
//! input gives a [`ZipError`], never a panic. CRC-32 checksums are not verified (that would mean
//! reading every tensor byte when the archive is opened).

use std::ops::Range;

/// Why an archive could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZipError {
    /// The bytes are not a ZIP archive, or its structure is damaged.
    #[error("not a valid zip archive: {0}")]
    Malformed(String),
    /// An entry uses a feature this reader does not support (compression, encryption).
    #[error("zip entry `{name}`: {reason}")]
    Unsupported {
        /// The entry's name inside the archive.
        name: String,
        /// What is not supported.
        reason: String,
    },
}

/// One entry of a ZIP archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// The entry's name (path inside the archive), decoded as UTF-8 (lossily).
    pub name: String,
    /// The compression method (0 = stored, 8 = deflate, ...).
    pub method: u16,
    /// The general-purpose flags (bit 0 = encrypted).
    pub flags: u16,
    /// Absolute byte range of the entry's (possibly compressed) data within the archive bytes.
    pub data: Range<usize>,
    /// Size of the data once uncompressed, as recorded in the central directory.
    pub uncompressed_size: u64,
}

impl ZipEntry {
    /// The byte range of this entry's content, if it can be read without decompression:
    /// stored (method 0), not encrypted, with equal compressed and uncompressed sizes.
    pub fn stored_data(&self) -> Result<Range<usize>, ZipError> {
        if self.flags & 1 != 0 {
            return Err(self.unsupported("entry is encrypted".into()));
        }
        if self.method != 0 {
            return Err(self.unsupported(format!(
                "compression method {} ({}); only uncompressed (stored) entries can be read \
                 as tensor data",
                self.method,
                method_name(self.method)
            )));
        }
        if self.uncompressed_size != self.data.len() as u64 {
            return Err(self.unsupported(format!(
                "stored entry has compressed size {} but uncompressed size {}",
                self.data.len(),
                self.uncompressed_size
            )));
        }
        Ok(self.data.clone())
    }

    fn unsupported(&self, reason: String) -> ZipError {
        ZipError::Unsupported {
            name: self.name.clone(),
            reason,
        }
    }
}

fn method_name(m: u16) -> &'static str {
    match m {
        0 => "stored",
        8 => "deflate",
        9 => "deflate64",
        12 => "bzip2",
        14 => "lzma",
        93 => "zstd",
        95 => "xz",
        _ => "unknown",
    }
}

pub(super) const EOCD_SIG: u32 = 0x0605_4b50;
pub(super) const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
pub(super) const EOCD64_SIG: u32 = 0x0606_4b50;
pub(super) const CDIR_SIG: u32 = 0x0201_4b50;
pub(super) const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const EOCD64_LOCATOR_LEN: usize = 20;
const EOCD64_LEN: usize = 56;
const CDIR_LEN: usize = 46;
const LOCAL_LEN: usize = 30;

fn bad(msg: impl Into<String>) -> ZipError {
    ZipError::Malformed(msg.into())
}

/// Bounds-checked little-endian reads.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&self, at: usize, len: usize, what: &str) -> Result<&[u8], ZipError> {
        at.checked_add(len)
            .and_then(|end| self.0.get(at..end))
            .ok_or_else(|| {
                bad(format!(
                    "{what} at offset {at} (+{len} bytes) lies past the end of the file \
                     ({} bytes); the file is truncated",
                    self.0.len()
                ))
            })
    }
    fn u16(&self, at: usize, what: &str) -> Result<u16, ZipError> {
        let b = self.bytes(at, 2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: usize, what: &str) -> Result<u32, ZipError> {
        let b = self.bytes(at, 4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, at: usize, what: &str) -> Result<u64, ZipError> {
        let b = self.bytes(at, 8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

fn to_usize(v: u64, what: &str) -> Result<usize, ZipError> {
    usize::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit in memory")))
}

/// Lists the entries of the ZIP archive held in `bytes`, in central-directory order.
pub fn read_entries(bytes: &[u8]) -> Result<Vec<ZipEntry>, ZipError> {
    let r = Reader(bytes);
    if bytes.len() < EOCD_LEN {
        return Err(bad(format!(
            "file is {} bytes, too short to hold an end-of-central-directory record",
            bytes.len()
        )));
    }
    // The EOCD record is at the end, followed by a comment of at most 65535 bytes.
    let lowest = bytes.len().saturating_sub(EOCD_LEN + 0xFFFF);
    let mut eocd = None;
    for at in (lowest..=bytes.len() - EOCD_LEN).rev() {
        if r.u32(at, "signature")? == EOCD_SIG {
            let comment_len = r.u16(at + 20, "comment length")? as usize;
            if at + EOCD_LEN + comment_len == bytes.len() {
                eocd = Some(at);
                break;
            }
        }
    }
    let eocd = eocd.ok_or_else(|| bad("no end-of-central-directory record found"))?;

    let mut count = r.u16(eocd + 10, "entry count")? as u64;
    let mut cd_size = r.u32(eocd + 12, "central directory size")? as u64;
    let mut cd_offset = r.u32(eocd + 16, "central directory offset")? as u64;

    // ZIP64: a locator right before the EOCD points at the ZIP64 EOCD record.
    if eocd >= EOCD64_LOCATOR_LEN
        && r.u32(eocd - EOCD64_LOCATOR_LEN, "signature")? == EOCD64_LOCATOR_SIG
    {
        let loc = eocd - EOCD64_LOCATOR_LEN;
        let rec = to_usize(
            r.u64(loc + 8, "zip64 record offset")?,
            "zip64 record offset",
        )?;
        if r.u32(rec, "zip64 end-of-central-directory record")? != EOCD64_SIG {
            return Err(bad(format!(
                "zip64 locator points at offset {rec}, which holds no zip64 record"
            )));
        }
        r.bytes(rec, EOCD64_LEN, "zip64 end-of-central-directory record")?;
        count = r.u64(rec + 32, "zip64 entry count")?;
        cd_size = r.u64(rec + 40, "zip64 central directory size")?;
        cd_offset = r.u64(rec + 48, "zip64 central directory offset")?;
    }

    let cd_offset = to_usize(cd_offset, "central directory offset")?;
    let cd_size = to_usize(cd_size, "central directory size")?;
    r.bytes(cd_offset, cd_size, "central directory")?;
    // Each record takes at least CDIR_LEN bytes: bounds the count before allocating.
    if count > (cd_size / CDIR_LEN) as u64 {
        return Err(bad(format!(
            "{count} entries cannot fit in a {cd_size}-byte central directory"
        )));
    }

    let mut entries = Vec::with_capacity(count as usize);
    let mut at = cd_offset;
    for i in 0..count {
        if r.u32(at, "central directory record")? != CDIR_SIG {
            return Err(bad(format!(
                "central directory record {i} at offset {at} has a bad signature"
            )));
        }
        let flags = r.u16(at + 8, "flags")?;
        let method = r.u16(at + 10, "compression method")?;
        let mut csize = r.u32(at + 20, "compressed size")? as u64;
        let mut usize_ = r.u32(at + 24, "uncompressed size")? as u64;
        let name_len = r.u16(at + 28, "name length")? as usize;
        let extra_len = r.u16(at + 30, "extra length")? as usize;
        let comment_len = r.u16(at + 32, "comment length")? as usize;
        let mut local = r.u32(at + 42, "local header offset")? as u64;
        let name_bytes = r.bytes(at + CDIR_LEN, name_len, "entry name")?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let extra = r.bytes(at + CDIR_LEN + name_len, extra_len, "extra field")?;

        // ZIP64 extended information: present values replace the 0xFFFFFFFF placeholders,
        // in the order uncompressed size, compressed size, local header offset.
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16::from_le_bytes([extra[e], extra[e + 1]]);
            let len = u16::from_le_bytes([extra[e + 2], extra[e + 3]]) as usize;
            let body = extra
                .get(e + 4..e + 4 + len)
                .ok_or_else(|| bad(format!("entry `{name}`: extra field runs past its record")))?;
            if id == 0x0001 {
                let er = Reader(body);
                let mut p = 0;
                let mut next = |what: &str| -> Result<u64, ZipError> {
                    let v = er
                        .u64(p, what)
                        .map_err(|_| bad(format!("entry `{name}`: zip64 field {what} missing")))?;
                    p += 8;
                    Ok(v)
                };
                if usize_ == 0xFFFF_FFFF {
                    usize_ = next("uncompressed size")?;
                }
                if csize == 0xFFFF_FFFF {
                    csize = next("compressed size")?;
                }
                if local == 0xFFFF_FFFF {
                    local = next("local header offset")?;
                }
            }
            e += 4 + len;
        }

        let local = to_usize(local, "local header offset")?;
        if r.u32(local, "local header")? != LOCAL_SIG {
            return Err(bad(format!(
                "entry `{name}`: no local header at offset {local}"
            )));
        }
        let lname = r.u16(local + 26, "local name length")? as usize;
        let lextra = r.u16(local + 28, "local extra length")? as usize;
        let start = local + LOCAL_LEN + lname + lextra;
        let len = to_usize(csize, "compressed size")?;
        r.bytes(start, len, &format!("data of entry `{name}`"))?;
        entries.push(ZipEntry {
            name,
            method,
            flags,
            data: start..start + len,
            uncompressed_size: usize_,
        });
        at += CDIR_LEN + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch::testing::build_zip;

    #[test]
    fn reads_plain_and_zip64_archives() {
        for zip64 in [false, true] {
            let z = build_zip(
                &[("a/x", b"hello"), ("a/data/0", b"\x01\x02\x03")],
                zip64,
                0,
            );
            let es = read_entries(&z).unwrap();
            assert_eq!(es.len(), 2);
            assert_eq!(es[0].name, "a/x");
            assert_eq!(&z[es[0].stored_data().unwrap()], b"hello");
            assert_eq!(es[1].name, "a/data/0");
            assert_eq!(&z[es[1].stored_data().unwrap()], b"\x01\x02\x03");
        }
    }

    #[test]
    fn compressed_entry_is_refused_by_name() {
        let z = build_zip(&[("arch/data/3", b"zzzz")], false, 8);
        let es = read_entries(&z).unwrap();
        let err = es[0].stored_data().unwrap_err().to_string();
        assert!(
            err.contains("arch/data/3") && err.contains("deflate"),
            "{err}"
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for zip64 in [false, true] {
            let z = build_zip(&[("a/x", b"hello"), ("a/y", b"world!")], zip64, 0);
            for cut in 0..z.len() {
                // Cutting the tail removes the EOCD (or shifts it): must fail cleanly.
                assert!(
                    read_entries(&z[..cut]).is_err(),
                    "cut at {cut} zip64={zip64}"
                );
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let z = build_zip(&[("a/x", b"hello"), ("a/y", b"world!")], true, 0);
        for i in 0..z.len() {
            for v in [0x00u8, 0xFF, 0x7F] {
                let mut c = z.clone();
                c[i] = v;
                if let Ok(es) = read_entries(&c) {
                    for e in es {
                        assert!(e.data.end <= c.len());
                    }
                }
            }
        }
    }
}
