//! The sha256 of a file that is being written out of order, computed while it is written.
//!
//! The lock file records the digest of every output. Reading a multi-gigabyte shard back after
//! the merge costs seconds of one core at the very end, when nothing else runs. Instead, each
//! shard gets an [`OrderedHasher`]: writers report every byte range they finished
//! ([`OrderedHasher::written`]); a thread of its own follows the contiguous written prefix (the
//! "watermark") and hashes it from the page cache while the merge goes on. Tensors are merged
//! roughly in file order, so the prefix grows steadily and little is left for the end.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Bytes hashed per read; also how far the watermark must move to wake the hashing thread.
const STEP: u64 = 8 << 20;

#[derive(Default)]
struct State {
    /// Finished ranges beyond the watermark, start → end.
    pending: BTreeMap<u64, u64>,
    /// Every byte below this is written.
    watermark: u64,
    /// Set when no more writes come (finished or abandoned).
    closed: bool,
    /// The file's length.
    len: u64,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// Hashes one file of known length in order as its ranges are reported written.
pub struct OrderedHasher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<String>>>,
}

impl OrderedHasher {
    /// Starts hashing `path` (opened for reading separately), `len` bytes long.
    pub fn start(path: &Path, len: u64) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                len,
                ..State::default()
            }),
            cv: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("smelt-hash".into())
            .spawn(move || follow(&s, &file, &path, len))
            .map_err(|e| Error::ThreadStart {
                what: "the hashing thread".into(),
                reason: e.to_string(),
            })?;
        Ok(OrderedHasher {
            shared,
            thread: Some(thread),
        })
    }

    /// Reports bytes `start..end` as written.
    pub fn written(&self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut st = lock(&self.shared.state);
        let before = st.watermark;
        if start <= st.watermark {
            st.watermark = st.watermark.max(end);
        } else {
            let e = st.pending.entry(start).or_insert(end);
            *e = (*e).max(end);
        }
        while let Some((&s, &e)) = st.pending.first_key_value() {
            if s > st.watermark {
                break;
            }
            st.pending.pop_first();
            st.watermark = st.watermark.max(e);
        }
        // wake the thread each time the watermark crosses a STEP boundary (it waits for a
        // whole STEP beyond what it hashed, so it is woken at least once per STEP) and at the end
        if st.watermark / STEP != before / STEP || st.watermark >= st.len {
            self.shared.cv.notify_one();
        }
    }

    /// Waits for the whole file to be hashed and returns its sha256 (hex). Fails if a range was
    /// never reported written.
    pub fn finish(mut self) -> Result<String> {
        self.close();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => Err(Error::ThreadFailed {
                what: "the hashing thread".into(),
            }),
        }
    }

    fn close(&self) {
        lock(&self.shared.state).closed = true;
        self.shared.cv.notify_one();
    }
}

impl Drop for OrderedHasher {
    fn drop(&mut self) {
        // an abandoned write (an error elsewhere): let the thread end
        self.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hashing thread: hashes up to the watermark, sleeps until it moves, until closed.
fn follow(s: &Shared, file: &File, path: &PathBuf, len: u64) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; STEP as usize];
    let mut hashed = 0u64;
    loop {
        let (mark, closed) = {
            let mut st = lock(&s.state);
            while !st.closed && st.watermark < (hashed + STEP).min(len) {
                st = s.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            (st.watermark.min(len), st.closed)
        };
        while hashed < mark {
            let n = (mark - hashed).min(STEP) as usize;
            file.read_exact_at(&mut buf[..n], hashed)
                .map_err(|e| Error::io(path, e))?;
            h.update(&buf[..n]);
            hashed += n as u64;
        }
        if hashed >= len {
            return Ok(crate::lock::hex(&h.finalize()));
        }
        if closed {
            return Err(Error::Unwritten {
                path: path.clone(),
                from: hashed,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn out_of_order_writes_hash_like_the_finished_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let len = 3 * STEP + 12345;
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        let h = OrderedHasher::start(&p, len).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        // pieces in a scrambled order
        let piece = 1_000_003u64;
        let mut starts: Vec<u64> = (0..len.div_ceil(piece)).map(|i| i * piece).collect();
        starts.reverse();
        starts.swap(0, 2);
        for s in starts {
            let e = (s + piece).min(len);
            f.write_all_at(&data[s as usize..e as usize], s).unwrap();
            h.written(s, e);
        }
        assert_eq!(h.finish().unwrap(), crate::lock::sha256_hex(&data));
    }

    #[test]
    fn a_gap_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        File::create(&p).unwrap().set_len(100).unwrap();
        let h = OrderedHasher::start(&p, 100).unwrap();
        h.written(0, 40);
        h.written(50, 100);
        let e = h.finish().unwrap_err();
        assert!(matches!(e, Error::Unwritten { from: 40, .. }), "{e}");
        assert!(
            e.to_string().contains("from 40 on were never written"),
            "{e}"
        );
    }
}
