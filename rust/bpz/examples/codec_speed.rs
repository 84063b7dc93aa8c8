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
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / 1e4 - 800.0).to_le_bytes()
        })
        .collect();
    let len = floats.len();
    let mut out = vec![0u8; len];
    for (label, w) in [
        ("shuffle w=4", 4usize),
        ("shuffle w=2", 2),
        ("shuffle w=8", 8),
    ] {
        let t = time(|| codec::shuffle(&floats, w, &mut out));
        let mut back = vec![0u8; len];
        let u = time(|| codec::unshuffle(&out, w, &mut back));
        assert_eq!(back, floats);
        println!(
            "{label}: shuffle {} unshuffle {}",
            gbps(len, t),
            gbps(len, u)
        );
    }
    // One 2 MiB chunk, as the writer and reader see it (in cache).
    let small = &floats[..2 << 20];
    for w in [2usize, 4, 8] {
        let mut s = vec![0u8; small.len()];
        let mut back = vec![0u8; small.len()];
        let t = time(|| codec::shuffle(small, w, &mut s));
        let u = time(|| codec::unshuffle(&s, w, &mut back));
        println!(
            "2 MiB shuffle w={w}: shuffle {} unshuffle {}",
            gbps(small.len(), t),
            gbps(small.len(), u)
        );
    }
    let mut d = floats.clone();
    let t = time(|| codec::delta_encode(&mut d, 4));
    let u = time(|| codec::delta_decode(&mut d, 4));
    println!("delta w=4: encode {} decode {}", gbps(len, t), gbps(len, u));
    // Sorted indices: delta + shuffle fused, as the writer runs it.
    let sorted: Vec<u8> = (0..(2u32 << 20) / 4)
        .flat_map(|i| (i * 33 + i % 7).to_le_bytes())
        .collect();
    for w in [4usize, 8] {
        let mut s = vec![0u8; sorted.len()];
        let mut back = vec![0u8; sorted.len()];
        let t = time(|| codec::delta_shuffle(&sorted, w, &mut s));
        let u = time(|| codec::unshuffle_delta(&s, w, &mut back));
        assert_eq!(back, sorted);
        println!(
            "2 MiB delta_shuffle w={w}: encode {} decode {}",
            gbps(sorted.len(), t),
            gbps(sorted.len(), u)
        );
    }
    let bools: Vec<u8> = floats[..2 << 20].iter().map(|b| (*b < 5) as u8).collect();
    let mut packed = vec![0u8; bools.len() / 8];
    let mut back = vec![0u8; bools.len()];
    let t = time(|| assert!(codec::bitpack_into(&bools, &mut packed)));
    let u = time(|| codec::bitunpack(&packed, &mut back));
    assert_eq!(back, bools);
    println!(
        "2 MiB bitpack: pack {} unpack {}",
        gbps(bools.len(), t),
        gbps(bools.len(), u)
    );
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
        let opts = WriterOptions {
            compression,
            ..Default::default()
        };
        let mut bytes = Vec::new();
        let t = time(|| {
            let mut w =
                Writer::new(Vec::with_capacity(big.len() + (1 << 20)), opts.clone()).unwrap();
            w.add_tensor("x", DType::F32, &[(big.len() / 4) as u64], &big)
                .unwrap();
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
