//! Compressed save and load against the bare codec on all cores:
//! `cargo run --release -p bpz --example save_speed -- [MiB=512] [repeats=5] [cases=w1,w2,w3]`.
//!
//! * `codec`: shuffle + zstd-1 over the same 2 MiB chunks with rayon, per-thread
//!   context and buffers, output discarded — the reference the save is held to;
//! * `save`: `Writer::create` in /tmp (no fsync), every tensor added, `finish`;
//!   also into `io::sink()`, which leaves out the copy into the page cache;
//! * `load`: `Reader::open`, every tensor `read` (fresh buffers) and `read_into`
//!   (reused buffers, i.e. without first-touch page faults);
//! * `decode`: zstd decompress + unshuffle of the codec's chunks into reused buffers.
//!
//! Prints medians of `repeats` runs (wall time, its minimum, and CPU time of all
//! threads); `SAVE_SPEED_ONLY=<step>[,<step>...]` runs those steps only, for a profiler;
//! `SAVE_SPEED_FORMAT=1.0|1.1` picks the format written (default: the writer's). The
//! data are deterministic:
//! * w1: float32 N(0, 0.02), 32 tensors (W1-dense), `Compression::Zstd`;
//! * w2: spiking-network state + CSR int32 indices sorted within rows (W2-snn-like), `AUTO`;
//!   w2shuffle: the same with `Zstd` and shuffle for every tensor (the codec's own transform);
//! * w3: 20,000 small arrays of mixed dtypes (W3-small-like), `AUTO`;
//! * tiny: 1,000,000 0-d float32 tensors (the writer's per-tensor overhead), `AUTO`.

use std::cell::RefCell;
use std::time::Instant;

use bpz::{codec, Compression, DType, Filter, FormatVersion, Reader, Writer, WriterOptions};
use rayon::prelude::*;

const CHUNK: usize = 2 << 20;

struct Tensor {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e3779b97f4a7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn unit(s: &mut u64) -> f64 {
    ((splitmix(s) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// `n` values from `f(rng)` generated in parallel blocks with fixed seeds.
fn gen<T: Send, F: Fn(&mut u64) -> T + Sync>(n: usize, seed: u64, f: F) -> Vec<T> {
    const BLOCK: usize = 1 << 16;
    (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .flat_map_iter(|b| {
            let mut s = seed ^ (b as u64).wrapping_mul(0x2545f4914f6cdd1d);
            let len = BLOCK.min(n - b * BLOCK);
            (0..len).map(|_| f(&mut s)).collect::<Vec<T>>()
        })
        .collect()
}

fn normal(s: &mut u64) -> f32 {
    // Box-Muller, one value per pair (simple, deterministic).
    let (u, v) = (unit(s), unit(s));
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

fn f32_bytes(v: Vec<f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn w1(mib: usize) -> Vec<Tensor> {
    let rows = (mib << 20) / 32 / 4 / 4096;
    (0..32)
        .map(|i| Tensor {
            name: format!(
                "params/block_{:02}/attn/w{}",
                i / 4,
                ["q", "k", "v", "o"][i % 4]
            ),
            dtype: DType::F32,
            shape: vec![rows as u64, 4096],
            data: f32_bytes(gen(rows * 4096, 100 + i as u64, |s| normal(s) * 0.02)),
        })
        .collect()
}

fn w2(mib: usize) -> Vec<Tensor> {
    // 512 MiB at 1e6 neurons per population, as W2-snn.
    let n = (1_000_000usize * mib / 512).max(100);
    let mut out = Vec::new();
    let f32t = |name: String, v: Vec<f32>| Tensor {
        name,
        dtype: DType::F32,
        shape: vec![v.len() as u64],
        data: f32_bytes(v),
    };
    let boolt = |name: String, v: Vec<u8>| Tensor {
        name,
        dtype: DType::Bool,
        shape: vec![v.len() as u64],
        data: v,
    };
    for (p, pop) in ["E", "I"].into_iter().enumerate() {
        let seed = 1000 * (p as u64 + 1);
        out.push(f32t(
            format!("neurons/{pop}/V"),
            gen(n, seed, |s| normal(s) * 4.0 - 60.0),
        ));
        out.push(boolt(
            format!("neurons/{pop}/spike"),
            gen(n, seed + 1, |s| (unit(s) < 0.02) as u8),
        ));
        out.push(boolt(
            format!("neurons/{pop}/refractory"),
            gen(n, seed + 2, |s| (unit(s) < 0.03) as u8),
        ));
        let t_last = gen(n, seed + 3, |s| {
            if unit(s) < 0.03 {
                900.0 + (unit(s) * 1000.0).round() as f32 / 10.0
            } else {
                -1e7
            }
        });
        out.push(f32t(format!("neurons/{pop}/t_last_spike"), t_last));
        out.push(f32t(format!("neurons/{pop}/input"), vec![0.0; n]));
        out.push(f32t(
            format!("neurons/{pop}/g_E"),
            gen(n, seed + 4, |s| -(unit(s).ln() as f32) * 0.3),
        ));
        out.push(f32t(
            format!("neurons/{pop}/g_I"),
            gen(n, seed + 5, |s| -(unit(s).ln() as f32) * 0.6),
        ));
    }
    let state: usize = out.iter().map(|t| t.data.len()).sum();
    let k = ((mib << 20).saturating_sub(state) / 4 / 4 / n).max(1);
    for (j, proj) in ["E2E", "E2I", "I2E", "I2I"].into_iter().enumerate() {
        // k distinct random targets per row, sorted within the row.
        let rows: Vec<Vec<i32>> = gen(n, 5000 + j as u64, |s| {
            let mut row: Vec<i32> = (0..k).map(|_| (splitmix(s) % n as u64) as i32).collect();
            row.sort_unstable();
            row.dedup();
            row
        });
        let mut indptr = vec![0i32];
        for r in &rows {
            indptr.push(indptr.last().unwrap() + r.len() as i32);
        }
        let indices: Vec<u8> = rows
            .into_iter()
            .flatten()
            .flat_map(i32::to_le_bytes)
            .collect();
        let i32t = |name: String, data: Vec<u8>| Tensor {
            name,
            dtype: DType::I32,
            shape: vec![data.len() as u64 / 4],
            data,
        };
        out.push(i32t(
            format!("synapses/{proj}/conn/indptr"),
            indptr.into_iter().flat_map(i32::to_le_bytes).collect(),
        ));
        out.push(i32t(format!("synapses/{proj}/conn/indices"), indices));
    }
    out
}

fn tiny() -> Vec<Tensor> {
    (0..1_000_000)
        .map(|i| Tensor {
            name: format!("state/{i}"),
            dtype: DType::F32,
            shape: vec![],
            data: (i as f32).to_le_bytes().to_vec(),
        })
        .collect()
}

fn format() -> FormatVersion {
    match std::env::var("SAVE_SPEED_FORMAT").as_deref() {
        Ok("1.0") => FormatVersion::V1_0,
        Ok("1.1") => FormatVersion::V1_1,
        Ok(other) => panic!("SAVE_SPEED_FORMAT={other}: not 1.0 or 1.1"),
        Err(_) => FormatVersion::default(),
    }
}

fn w3() -> Vec<Tensor> {
    let dtypes = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::Bool,
        DType::C64,
    ];
    let mut s = 77u64;
    (0..20_000)
        .map(|i| {
            let dtype = dtypes[i % dtypes.len()];
            let rank = (splitmix(&mut s) % 3) as usize;
            let shape: Vec<u64> = (0..rank).map(|_| 1 + splitmix(&mut s) % 64).collect();
            let n: u64 = shape.iter().product();
            let data: Vec<u8> = match dtype {
                DType::Bool => (0..n).map(|_| (unit(&mut s) < 0.3) as u8).collect(),
                DType::F32 | DType::C64 => (0..n as usize * dtype.size() / 4)
                    .flat_map(|_| normal(&mut s).to_le_bytes())
                    .collect(),
                DType::F64 => (0..n)
                    .flat_map(|_| (normal(&mut s) as f64).to_le_bytes())
                    .collect(),
                DType::F16 | DType::BF16 => (0..n)
                    .flat_map(|_| ((normal(&mut s).to_bits() >> 16) as u16).to_le_bytes())
                    .collect(),
                _ => (0..n as usize * dtype.size())
                    .map(|j| {
                        if j % dtype.size() == 0 {
                            splitmix(&mut s) as u8
                        } else {
                            0
                        }
                    })
                    .collect(),
            };
            Tensor {
                name: format!("state/group_{:03}/v{:03}", i / 200, i % 200),
                dtype,
                shape,
                data,
            }
        })
        .collect()
}

thread_local! {
    static CCTX: RefCell<zstd::bulk::Compressor<'static>> = RefCell::new(zstd::bulk::Compressor::new(1).unwrap());
    static DCTX: RefCell<zstd::bulk::Decompressor<'static>> = RefCell::new(zstd::bulk::Decompressor::new().unwrap());
    static BUFS: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The 2 MiB chunks of every tensor, each with its element width.
fn pieces(ts: &[Tensor]) -> Vec<(&[u8], usize)> {
    ts.iter()
        .flat_map(|t| t.data.chunks(CHUNK).map(move |c| (c, t.dtype.size())))
        .collect()
}

/// Bare codec: shuffle + zstd-1 per chunk on all cores; returns the compressed size.
fn codec_compress(ps: &[(&[u8], usize)]) -> usize {
    ps.par_iter()
        .map(|&(piece, w)| {
            BUFS.with(|b| {
                let (scratch, out) = &mut *b.borrow_mut();
                scratch.resize(piece.len(), 0);
                codec::shuffle(piece, w, scratch);
                out.clear();
                out.reserve(zstd::zstd_safe::compress_bound(piece.len()));
                CCTX.with(|c| {
                    c.borrow_mut()
                        .compress_to_buffer(&scratch[..], out)
                        .unwrap()
                })
            })
        })
        .sum()
}

fn codec_frames(ps: &[(&[u8], usize)]) -> Vec<Vec<u8>> {
    ps.par_iter()
        .map(|&(piece, w)| {
            let mut s = vec![0u8; piece.len()];
            codec::shuffle(piece, w, &mut s);
            zstd::bulk::compress(&s, 1).unwrap()
        })
        .collect()
}

/// Bare decode: decompress + unshuffle of every frame into `outs` (reused).
fn codec_decompress(frames: &[Vec<u8>], ps: &[(&[u8], usize)], outs: &mut [Vec<u8>]) {
    outs.par_iter_mut()
        .zip(frames)
        .zip(ps)
        .for_each(|((out, frame), &(piece, w))| {
            BUFS.with(|b| {
                let (scratch, _) = &mut *b.borrow_mut();
                scratch.resize(piece.len(), 0);
                let n = DCTX.with(|d| {
                    d.borrow_mut()
                        .decompress_to_buffer(frame, &mut scratch[..])
                        .unwrap()
                });
                assert_eq!(n, piece.len());
                codec::unshuffle(scratch, w, out);
            })
        });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU seconds (user + system, all threads) of this process so far, from
/// /proc (Linux; 0 elsewhere). On a shared machine the CPU time a step needs
/// is steadier than its wall time.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<f64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// Wall and CPU time of `f`.
fn timed<R>(f: impl FnOnce() -> R) -> (R, (f64, f64)) {
    let (t, c) = (Instant::now(), cpu_seconds());
    let r = f();
    (r, (t.elapsed().as_secs_f64(), cpu_seconds() - c))
}

/// `label  median ms (min ms) GB/s, cpu ms`.
fn show(label: &str, bytes: usize, v: &[(f64, f64)]) -> String {
    let wall = median(v.iter().map(|x| x.0).collect());
    let min = v.iter().map(|x| x.0).fold(f64::MAX, f64::min);
    let cpu = median(v.iter().map(|x| x.1).collect());
    format!(
        "{label} {:6.0} ms (min {:6.0}) {:5.2} GB/s cpu {:6.0} ms",
        wall * 1e3,
        min * 1e3,
        bytes as f64 / wall / 1e9,
        cpu * 1e3
    )
}

fn run(
    label: &str,
    ts_data: &[Tensor],
    compression: Compression,
    filter: Option<Filter>,
    repeats: usize,
) {
    let bytes: usize = ts_data.iter().map(|t| t.data.len()).sum();
    let ps = pieces(ts_data);
    let path =
        std::env::temp_dir().join(format!("bpz-save-speed-{}-{label}.bpz", std::process::id()));
    // SAVE_SPEED_ONLY=codec|save|sink|load|read_into|decode runs just that step
    // (for a profiler); the file is written once first if the step reads it.
    let only = std::env::var("SAVE_SPEED_ONLY").ok();
    let want = |step: &str| {
        only.as_deref()
            .map_or(true, |o| o.split(',').any(|s| s == step))
    };
    // Only what the chosen steps use is prepared (a profile then shows those steps alone).
    let frames = if want("decode") {
        codec_frames(&ps)
    } else {
        Vec::new()
    };
    let mut outs: Vec<Vec<u8>> = if want("decode") {
        ps.iter().map(|p| vec![0u8; p.0.len()]).collect()
    } else {
        Vec::new()
    };
    let mut reads: Vec<Vec<u8>> = if want("read_into") {
        ts_data.iter().map(|t| vec![0u8; t.data.len()]).collect()
    } else {
        Vec::new()
    };
    let (mut tc, mut ts, mut tl, mut tli, mut td, mut tsink) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut stored = 0u64;
    let mut codec_size = 0;
    // As bench/worker.py: the old file removed and the page cache synced before the timed
    // save (renaming over a file makes ext4 flush the new one in the rename; freeing the
    // old one's pages is no part of writing the new one).
    let fresh = |path: &std::path::Path| {
        let _ = std::fs::remove_file(path);
        let _ = std::process::Command::new("sync").status();
    };
    let save = |path: &std::path::Path| {
        let opts = WriterOptions {
            compression,
            filter,
            sync: false,
            format: format(),
            ..Default::default()
        };
        let mut w = Writer::create(path, opts).unwrap();
        for x in ts_data {
            w.add_tensor(&x.name, x.dtype, &x.shape, &x.data).unwrap();
        }
        w.finish().unwrap().0.file_bytes
    };
    if !want("save") {
        stored = save(&path);
    }
    for _ in 0..repeats {
        // Interleaved, so that a noisy neighbour hits every measurement alike.
        if want("codec") {
            let (size, t) = timed(|| codec_compress(&ps));
            codec_size = size;
            tc.push(t);
        }

        if want("save") {
            fresh(&path);
            let (file_bytes, t) = timed(|| save(&path));
            stored = file_bytes;
            ts.push(t);
        }

        if want("sink") {
            let ((), t) = timed(|| {
                let opts = WriterOptions {
                    compression,
                    filter,
                    format: format(),
                    ..Default::default()
                };
                let mut w = Writer::new(std::io::sink(), opts).unwrap();
                for x in ts_data {
                    w.add_tensor(&x.name, x.dtype, &x.shape, &x.data).unwrap();
                }
                w.finish().unwrap();
            });
            tsink.push(t);
        }

        if want("load") {
            let ((), t) = timed(|| {
                let r = Reader::open(&path).unwrap();
                for x in ts_data {
                    std::hint::black_box(r.read(&x.name).unwrap());
                }
            });
            tl.push(t);
        }

        if want("read_into") {
            let ((), t) = timed(|| {
                let r = Reader::open(&path).unwrap();
                for (x, out) in ts_data.iter().zip(&mut reads) {
                    r.read_into(&x.name, out).unwrap();
                }
            });
            tli.push(t);
        }

        if want("decode") {
            let ((), t) = timed(|| codec_decompress(&frames, &ps, &mut outs));
            td.push(t);
        }
    }
    if only.is_some() {
        let _ = std::fs::remove_file(&path);
        for (name, times) in [("save          ", &ts), ("save to a sink", &tsink)] {
            if !times.is_empty() {
                println!("{label}  {}", show(name, bytes, times));
            }
        }
        return;
    }
    for (x, out) in ts_data.iter().zip(&reads) {
        assert!(x.data == *out, "{}: read back differs", x.name);
    }
    let _ = std::fs::remove_file(&path);
    let ratio = |a: &[(f64, f64)], b: &[(f64, f64)]| {
        let m = |v: &[(f64, f64)], i: usize| {
            median(v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect())
        };
        format!("{:.2} (cpu {:.2})", m(a, 0) / m(b, 0), m(a, 1) / m(b, 1))
    };
    println!(
        "{label}: {:.0} MiB in {} tensors, {compression:?}, filter {filter:?}: ratio {:.3} (codec {:.3})",
        bytes as f64 / 1048576.0,
        ts_data.len(),
        bytes as f64 / stored as f64,
        bytes as f64 / codec_size as f64
    );
    println!("  {}", show("codec compress", bytes, &tc));
    println!("  {}", show("save          ", bytes, &ts));
    println!("  {}", show("save to a sink", bytes, &tsink));
    println!("  {}", show("codec decode  ", bytes, &td));
    println!("  {}", show("load (read)   ", bytes, &tl));
    println!("  {}", show("load read_into", bytes, &tli));
    println!(
        "  save/codec {}   (to a sink {})   load/codec {}   read_into/codec {}",
        ratio(&tc, &ts),
        ratio(&tc, &tsink),
        ratio(&td, &tl),
        ratio(&td, &tli)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).map_or(512, |s| s.parse().unwrap());
    let repeats: usize = args.get(2).map_or(5, |s| s.parse().unwrap());
    let cases = args.get(3).map_or("w1,w2,w3", |s| s.as_str()).to_string();
    println!(
        "{} threads, {mib} MiB, {repeats} repeats (medians)",
        rayon::current_num_threads()
    );
    for case in cases.split(',') {
        match case {
            "w1" => run("w1", &w1(mib), Compression::Zstd, None, repeats),
            "w1auto" => run("w1auto", &w1(mib), Compression::AUTO, None, repeats),
            "w2" => run("w2", &w2(mib), Compression::AUTO, None, repeats),
            // The codec's own transform (shuffle) everywhere: the overhead around it alone.
            "w2shuffle" => run(
                "w2shuffle",
                &w2(mib),
                Compression::Zstd,
                Some(Filter::Shuffle),
                repeats,
            ),
            "w2zstd" => run("w2zstd", &w2(mib), Compression::Zstd, None, repeats),
            "w3" => run("w3", &w3(), Compression::AUTO, None, repeats),
            "tiny" => run("tiny", &tiny(), Compression::AUTO, None, repeats),
            other => panic!("unknown case {other}"),
        }
    }
}
