//! Progress on stderr: one line redrawn in place (tensors, bytes, throughput, ETA), only when
//! stderr is a terminal and `--quiet` is not given.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use merge_core::exec::Progress;

/// A progress line.
pub struct Bar {
    enabled: bool,
    last: Mutex<Option<Instant>>,
}

impl Bar {
    /// A bar that draws only on a terminal and when not quiet.
    pub fn new(quiet: bool) -> Bar {
        Bar {
            enabled: !quiet && std::io::stderr().is_terminal(),
            last: Mutex::new(None),
        }
    }

    /// Redraws (at most 10 times a second, and always at the end).
    pub fn update(&self, p: &Progress) {
        if !self.enabled {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let done = p.tensors_done == p.tensors_total;
        if !done && last.is_some_and(|t| t.elapsed().as_millis() < 100) {
            return;
        }
        *last = Some(Instant::now());
        let secs = p.elapsed.as_secs_f64().max(1e-9);
        let rate = p.bytes_done as f64 / secs;
        let eta = if rate > 0.0 {
            (p.bytes_total.saturating_sub(p.bytes_done)) as f64 / rate
        } else {
            0.0
        };
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "\r\x1b[2K[{}/{} tensors] {} / {}  {}/s  ETA {:.0}s",
            p.tensors_done,
            p.tensors_total,
            human(p.bytes_done),
            human(p.bytes_total),
            human(rate as u64),
            eta
        );
        let _ = e.flush();
    }

    /// Ends the line.
    pub fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}

/// Bytes in human units (decimal).
pub fn human(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}
