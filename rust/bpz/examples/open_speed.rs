//! Times opening an archive and getting one tensor, warm, in this process.
//!
//! `cargo run --release --example open_speed -- FILE [NAME]`: open (+ view of NAME).
//! `cargo run --release --example open_speed -- --w3 DIR`: writes bench W3's shape (20,000
//! small tensors, `state/group_XXX/vYYY`) as format 1.0 and 1.1 into DIR, then times open +
//! `tensor(name)` + the bytes (a view of a raw tensor, else a checked copy) for names spread
//! over the archive, for each.
use std::time::Instant;

use bpz::{Compression, DType, FormatVersion, Reader, WriterOptions};

fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Best, median and mean of `rounds` runs of `f`, in microseconds.
fn time(mut f: impl FnMut()) -> (f64, f64, f64) {
    let n = rounds();
    // FLUSH=1: touch (and free) 128 MiB of fresh memory before each run, as a program that
    // has been doing other work would: caches and TLB start cold.
    let flush = std::env::var_os("FLUSH").is_some();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        if flush {
            let mut v = vec![0u8; 128 << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
        }
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / n as f64;
    (times[0], times[n / 2], mean)
}

/// One tensor by name: its description, then its bytes as a binding hands them out.
fn get(r: &Reader, name: &str) {
    let t = r.tensor(name).expect("tensor");
    if t.is_raw() && r.mapping().is_some() {
        std::hint::black_box(r.view(name).expect("view"));
    } else {
        std::hint::black_box(r.read(name).expect("read"));
    }
}

fn w3(dir: &str) {
    std::fs::create_dir_all(dir).expect("create DIR");
    let mut x = 3u64;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let count = 20_000;
    let tensors: Vec<(String, Vec<u64>, Vec<u8>)> = (0..count)
        .map(|i| {
            let rank = next() % 3;
            let shape: Vec<u64> = (0..rank).map(|_| 1 + next() % 64).collect();
            let n: u64 = shape.iter().product();
            let data: Vec<u8> = (0..n * 4).map(|_| next() as u8).collect();
            let name = format!("state/group_{:03}/v{:03}", i / 200, i % 200);
            (name, shape, data)
        })
        .collect();
    let probes: Vec<&str> = (0..count)
        .step_by(997)
        .map(|i| tensors[i].0.as_str())
        .collect();
    for (label, format) in [("1.0", FormatVersion::V1_0), ("1.1", FormatVersion::V1_1)] {
        for (how, compression) in [("raw", Compression::None), ("auto", Compression::AUTO)] {
            let path = format!("{dir}/w3-{label}-{how}.bpz");
            let opts = WriterOptions {
                format,
                compression,
                sync: false,
                ..Default::default()
            };
            let mut w = bpz::Writer::create(&path, opts).expect("create");
            for (name, shape, data) in &tensors {
                w.add_tensor(name, DType::F32, shape, data).expect("add");
            }
            let (summary, _) = w.finish().expect("finish");
            let mut k = 0;
            let (best, median, mean) = time(|| {
                let r = Reader::open(&path).expect("open");
                get(&r, probes[k % probes.len()]);
                k += 1;
            });
            let (obest, omedian, _) = time(|| {
                std::hint::black_box(Reader::open(&path).expect("open"));
            });
            println!(
                "format {label}, {how:4} ({:.1} MB): open + tensor(name) + bytes: best {best:.1} us, \
                 median {median:.1} us, mean {mean:.1} us (open alone: best {obest:.1}, median \
                 {omedian:.1} us)",
                summary.file_bytes as f64 / 1e6
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--w3") {
        return w3(args.get(2).expect("usage: open_speed --w3 DIR"));
    }
    let path = args
        .get(1)
        .expect("usage: open_speed FILE [NAME] | --w3 DIR");
    let (best, median, mean) = time(|| {
        let r = bpz::Reader::open(path).expect("open");
        if let Some(name) = args.get(2) {
            std::hint::black_box(r.view(name).expect("view"));
        }
    });
    println!(
        "open{}: best {best:.1} us, median {median:.1} us, mean {mean:.1} us",
        if args.len() > 2 { " + view" } else { "" },
    );
}
