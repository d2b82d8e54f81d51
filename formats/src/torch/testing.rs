//! Builders of small torch checkpoints for tests: a `torch.save`-style pickle of a state dict
//! and a stored (uncompressed) ZIP archive, optionally with ZIP64 records. Used by this crate's
//! tests and, through the `testing` feature, by the tests of crates that read torch files.

use super::zip::{CDIR_SIG, EOCD_SIG, EOCD64_LOCATOR_SIG, EOCD64_SIG, LOCAL_SIG};

/// A test tensor: `(name, storage class, key, numel, offset, shape, stride)`.
pub type TestTensor<'a> = (
    &'a str,
    &'a str,
    &'a str,
    usize,
    usize,
    &'a [usize],
    &'a [usize],
);

/// Assembles a protocol-2 pickle of a dict (or `OrderedDict`) of tensors the way
/// `torch.save` writes it.
pub fn state_dict_pickle(tensors: &[TestTensor], ordered: bool) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    if ordered {
        p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    } else {
        p.push(b'}');
    }
    p.push(b'(');
    let int = |p: &mut Vec<u8>, v: usize| {
        p.push(b'J');
        p.extend_from_slice(&(v as u32).to_le_bytes());
    };
    let s = |p: &mut Vec<u8>, v: &str| {
        p.push(b'X');
        p.extend_from_slice(&(v.len() as u32).to_le_bytes());
        p.extend_from_slice(v.as_bytes());
    };
    for (name, class, key, numel, off, shape, stride) in tensors {
        s(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        s(&mut p, "storage");
        p.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
        s(&mut p, key);
        s(&mut p, "cpu");
        int(&mut p, *numel);
        p.extend_from_slice(b"tQ");
        int(&mut p, *off);
        p.push(b'(');
        for d in *shape {
            int(&mut p, *d);
        }
        p.push(b't');
        p.push(b'(');
        for d in *stride {
            int(&mut p, *d);
        }
        p.push(b't');
        p.push(0x89);
        p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
        p.extend_from_slice(b"tR");
    }
    p.push(b'u');
    if ordered {
        // BUILD with a `_metadata` state, as OrderedDict.__reduce__ produces.
        p.extend_from_slice(b"}(X\x09\x00\x00\x00_metadata}ub");
    }
    p.push(b'.');
    p
}

/// Builds a zip archive (optionally with ZIP64 records) for tests. Data is stored as is;
/// entries whose name contains `compressed_marker` are labelled with `method`.
pub fn build_zip_with(
    files: &[(&str, &[u8])],
    zip64: bool,
    method: u16,
    compressed_marker: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cd = Vec::new();
    for (name, data) in files {
        let method = if name.contains(compressed_marker) {
            method
        } else {
            0
        };
        let off = out.len() as u32;
        out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0]);
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // time, date, crc
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&3u16.to_le_bytes()); // 3 bytes of padding extra
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&[0xAA; 3]);
        out.extend_from_slice(data);

        cd.extend_from_slice(&CDIR_SIG.to_le_bytes());
        cd.extend_from_slice(&[45, 0, 45, 0, 0, 0]);
        cd.extend_from_slice(&method.to_le_bytes());
        cd.extend_from_slice(&[0; 8]);
        let (size, loc) = if zip64 {
            (0xFFFF_FFFFu32, 0xFFFF_FFFFu32)
        } else {
            (data.len() as u32, off)
        };
        cd.extend_from_slice(&size.to_le_bytes());
        cd.extend_from_slice(&size.to_le_bytes());
        cd.extend_from_slice(&(name.len() as u16).to_le_bytes());
        cd.extend_from_slice(&(if zip64 { 28u16 } else { 0 }).to_le_bytes());
        cd.extend_from_slice(&[0; 10]); // comment len, disk, attrs
        cd.extend_from_slice(&loc.to_le_bytes());
        cd.extend_from_slice(name.as_bytes());
        if zip64 {
            cd.extend_from_slice(&1u16.to_le_bytes());
            cd.extend_from_slice(&24u16.to_le_bytes());
            cd.extend_from_slice(&(data.len() as u64).to_le_bytes());
            cd.extend_from_slice(&(data.len() as u64).to_le_bytes());
            cd.extend_from_slice(&(off as u64).to_le_bytes());
        }
    }
    let cd_off = out.len();
    out.extend_from_slice(&cd);
    if zip64 {
        let rec = out.len();
        out.extend_from_slice(&EOCD64_SIG.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&(files.len() as u64).to_le_bytes());
        out.extend_from_slice(&(files.len() as u64).to_le_bytes());
        out.extend_from_slice(&(cd.len() as u64).to_le_bytes());
        out.extend_from_slice(&(cd_off as u64).to_le_bytes());
        out.extend_from_slice(&EOCD64_LOCATOR_SIG.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(rec as u64).to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out.extend_from_slice(&EOCD_SIG.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let n = if zip64 { 0xFFFF } else { files.len() as u16 };
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    let (size, off) = if zip64 {
        (0xFFFF_FFFFu32, 0xFFFF_FFFFu32)
    } else {
        (cd.len() as u32, cd_off as u32)
    };
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&off.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// Builds a zip archive whose entries all use `method` (data left as is).
pub fn build_zip(files: &[(&str, &[u8])], zip64: bool, method: u16) -> Vec<u8> {
    build_zip_with(files, zip64, method, "")
}
