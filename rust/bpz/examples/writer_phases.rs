//! The writer's per-tensor cost split into its two phases, format 1.0 against 1.1:
//! `cargo run --release -p bpz --example writer_phases -- [repeats=5] [cases=tiny,w3names]`.
//!
//! * `tiny`: 1,000,000 0-d float32 tensors named `state/{i}` (not in byte order, so the
//!   1.1 index sorts them), added to a writer into `io::sink()` after `reserve` (as the
//!   Python binding does), `AUTO` compression (all raw: under its minimum size);
//! * `sorted`: the same tensors under names already in byte order (`state/{i:07}`).
//!
//! `WRITER_PHASES_FORMAT=1.0|1.1` measures one format only (for a profiler).
//! For each format it prints the medians of *add* (every `add_tensor`) and *finish*
//! (index and trailer) in wall and CPU time (all threads). The formats alternate
//! within each repeat, so that a noisy neighbour hits both alike; on a shared machine
//! read the CPU figures.

use std::time::Instant;

use bpz::{Compression, DType, FormatVersion, Writer, WriterOptions};

/// CPU seconds (user + system, all threads) of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    rest.split(' ')
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse::<f64>().ok())
        .sum::<f64>()
        / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Tensor {
    name: String,
    data: [u8; 4],
}

fn tensors(sorted: bool) -> Vec<Tensor> {
    (0..1_000_000u32)
        .map(|i| Tensor {
            name: if sorted {
                format!("state/{i:07}")
            } else {
                format!("state/{i}")
            },
            data: (i as f32).to_le_bytes(),
        })
        .collect()
}

/// (add wall, add cpu, finish wall, finish cpu) of one save into a sink.
fn save(ts: &[Tensor], format: FormatVersion) -> [f64; 4] {
    let opts = WriterOptions {
        compression: Compression::AUTO,
        format,
        time_ns: Some(1),
        ..Default::default()
    };
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let mut w = Writer::new(std::io::sink(), opts).unwrap();
    w.reserve(ts.len());
    for t in ts {
        w.add_tensor(&t.name, DType::F32, &[], &t.data).unwrap();
    }
    let (t1, c1) = (Instant::now(), cpu_seconds());
    w.finish().unwrap();
    let (t2, c2) = (Instant::now(), cpu_seconds());
    [
        (t1 - t0).as_secs_f64(),
        c1 - c0,
        (t2 - t1).as_secs_f64(),
        c2 - c1,
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repeats: usize = args.get(1).map_or(5, |s| s.parse().unwrap());
    let cases = args
        .get(2)
        .map_or("tiny,sorted", |s| s.as_str())
        .to_string();
    // WRITER_PHASES_FORMAT=1.0|1.1: that format only (for a profiler).
    let only = std::env::var("WRITER_PHASES_FORMAT").ok();
    for case in cases.split(',') {
        let ts = match case {
            "tiny" => tensors(false),
            "sorted" => tensors(true),
            other => panic!("unknown case {other}"),
        };
        let formats: Vec<(&str, FormatVersion)> =
            [("1.0", FormatVersion::V1_0), ("1.1", FormatVersion::V1_1)]
                .into_iter()
                .filter(|(l, _)| only.as_deref().map_or(true, |o| o == *l))
                .collect();
        let mut runs: Vec<Vec<[f64; 4]>> = vec![Vec::new(); formats.len()];
        for _ in 0..repeats {
            for (k, (_, f)) in formats.iter().enumerate() {
                runs[k].push(save(&ts, *f));
            }
        }
        for ((label, _), r) in formats.iter().zip(&runs) {
            let m = |i: usize| median(r.iter().map(|x| x[i]).collect()) * 1e3;
            println!(
                "{case} {label}: add {:6.0} ms (cpu {:6.0})  finish {:6.0} ms (cpu {:6.0})  total cpu {:6.0} ms",
                m(0),
                m(1),
                m(2),
                m(3),
                median(r.iter().map(|x| x[1] + x[3]).collect()) * 1e3
            );
        }
    }
}
