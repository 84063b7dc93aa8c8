//! Throughput of the chunk codec on one core and of a whole write/read on all
//! cores: `cargo run --release -p bpz --example codec_speed`.

use std::time::Instant;

use bpz::codec;
use bpz::{Compression, DType, Filter, Reader, Writer, WriterOptions};

fn gbps(bytes: usize, secs: f64) -> String {
    format!("{:6.2} GB/s", bytes as f64 / secs / 1e9)
}

fn time<F: FnMut()>(mut f: F) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let n = 1 << 22; // 4 Mi floats = 16 MiB
    let mut x = 1u64;
    let floats: Vec<u8> = (0..n)
        .flat_map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / 1e4 - 800.0).to_le_bytes()
        })
        .collect();
    let len = floats.len();
    let mut out = vec![0u8; len];
    for (label, w) in [("shuffle w=4", 4usize), ("shuffle w=2", 2), ("shuffle w=8", 8)] {
        let t = time(|| codec::shuffle(&floats, w, &mut out));
        let mut back = vec![0u8; len];
        let u = time(|| codec::unshuffle(&out, w, &mut back));
        assert_eq!(back, floats);
        println!("{label}: shuffle {} unshuffle {}", gbps(len, t), gbps(len, u));
    }
    let mut d = floats.clone();
    let t = time(|| codec::delta_encode(&mut d, 4));
    let u = time(|| codec::delta_decode(&mut d, 4));
    println!("delta w=4: encode {} decode {}", gbps(len, t), gbps(len, u));
    let chunk = &floats[..2 << 20];
    for filter in [Filter::None, Filter::Shuffle] {
        let mut enc = (Vec::new(), false);
        let t = time(|| enc = codec::encode_chunk(filter, DType::F32, 1, chunk));
        let mut dec = vec![0u8; chunk.len()];
        let u = time(|| codec::decode_chunk(filter, DType::F32, &enc.0, &mut dec).unwrap());
        println!(
            "chunk {:>7} zstd-1 one core: encode {} decode {} ratio {:.3}",
            filter.name(),
            gbps(chunk.len(), t),
            gbps(chunk.len(), u),
            chunk.len() as f64 / enc.0.len() as f64
        );
    }
    // Whole archive, all cores.
    let big: Vec<u8> = floats.iter().cycle().take(256 << 20).copied().collect();
    for compression in [Compression::None, Compression::Zstd] {
        let opts = WriterOptions { compression, ..Default::default() };
        let mut bytes = Vec::new();
        let t = time(|| {
            let mut w = Writer::new(Vec::with_capacity(big.len() + (1 << 20)), opts.clone()).unwrap();
            w.add_tensor("x", DType::F32, &[(big.len() / 4) as u64], &big).unwrap();
            bytes = w.finish().unwrap().1.unwrap();
        });
        let r = Reader::from_bytes(bytes.clone()).unwrap();
        let u = time(|| {
            r.read("x").unwrap();
        });
        println!(
            "archive {:?}: write {} read {} (in memory, {} threads)",
            compression,
            gbps(big.len(), t),
            gbps(big.len(), u),
            rayon::current_num_threads()
        );
    }
}
