//! The I/O floor of a merge: read every byte of the input files once and write an output of
//! the given size once (then fsync), with the same number of threads smelt uses. Prints the
//! seconds it took and the throughput, in the same units `bench/run.sh` reports for smelt.
//!
//!     io-floor OUT_FILE OUTPUT_BYTES INPUT_FILE...

use std::fs::File;
use std::io::{Read, Write};
use std::time::Instant;

use rayon::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: io-floor OUT_FILE OUTPUT_BYTES INPUT_FILE...");
        std::process::exit(2);
    }
    let out = &args[0];
    let out_bytes: u64 = args[1].parse().expect("OUTPUT_BYTES");
    let inputs = &args[2..];
    let t0 = Instant::now();
    let read: u64 = inputs
        .par_iter()
        .map(|p| {
            let mut f = File::open(p).expect("open input");
            let mut buf = vec![0u8; 8 << 20];
            let mut n = 0u64;
            let mut x = 0u8;
            loop {
                let k = f.read(&mut buf).expect("read");
                if k == 0 {
                    break;
                }
                x ^= buf[k - 1];
                n += k as u64;
            }
            std::hint::black_box(x);
            n
        })
        .sum();
    let mut f = File::create(out).expect("create output");
    let buf = vec![0x3cu8; 8 << 20];
    let mut left = out_bytes;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..k]).expect("write");
        left -= k as u64;
    }
    f.sync_all().expect("fsync");
    let secs = t0.elapsed().as_secs_f64();
    std::fs::remove_file(out).ok();
    println!(
        "io_floor_seconds={secs:.3} read_bytes={read} write_bytes={out_bytes} throughput_gbps={:.3}",
        read as f64 / secs / 1e9
    );
}
