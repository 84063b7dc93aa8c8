//! Writes a small spiking-network state, reopens it and reads one variable
//! and one row range: `cargo run --release -p bpz --example demo [FILE]`.

use std::time::Instant;

use bpz::{Compression, DType, Reader, Writer, WriterOptions};

fn main() -> bpz::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "demo.bpz".into());
    let n = 1_000_000usize;
    let mut seed = 42u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let v: Vec<u8> = (0..n)
        .flat_map(|_| (-70.0 + (rand() % 2000) as f32 / 100.0).to_le_bytes())
        .collect();
    let spike: Vec<u8> = (0..n).map(|_| (rand() % 50 == 0) as u8).collect();
    let t_last: Vec<u8> = (0..n).flat_map(|_| (-1e7f32).to_le_bytes()).collect();
    let w: Vec<u8> = (0..n)
        .flat_map(|_| ((rand() % 1000) as f32 / 1e3).to_le_bytes())
        .collect();

    let t0 = Instant::now();
    let mut writer = Writer::create(
        &path,
        WriterOptions {
            compression: Compression::AUTO,
            ..Default::default()
        },
    )?;
    writer.add_tensor("E/V", DType::F32, &[n as u64], &v)?;
    writer.add_tensor("E/spike", DType::Bool, &[n as u64], &spike)?;
    writer.add_tensor("E/t_last_spike", DType::F32, &[n as u64], &t_last)?;
    writer.add_tensor("E2E/weight", DType::F32, &[1000, 1000], &w)?;
    let (summary, _) = writer.finish()?;
    let saved = t0.elapsed();
    let payload = (v.len() + spike.len() + t_last.len() + w.len()) as f64;
    println!(
        "saved {} tensors, {:.1} MB of state into {:.1} MB ({path}) in {saved:.2?}",
        summary.tensors,
        payload / 1e6,
        summary.file_bytes as f64 / 1e6
    );

    let t0 = Instant::now();
    let reader = Reader::open(&path)?;
    let view = reader.view("E2E/weight")?;
    println!(
        "opened and mapped E2E/weight ({} bytes, zero copy) in {:.2?}",
        view.len(),
        t0.elapsed()
    );
    for t in reader.tensors()? {
        println!(
            "  {:<16} {:<5} {:>12?} {:<8} {:<14} {:>10} -> {:>10} bytes",
            t.name,
            t.dtype.name(),
            t.shape,
            t.storage.name(),
            t.filter.name(),
            t.nbytes(),
            t.stored_bytes()
        );
    }
    let t0 = Instant::now();
    let rows = reader.read_rows("E2E/weight", 500..510)?;
    println!(
        "read rows 500..510 of E2E/weight ({} bytes) in {:.2?}",
        rows.len(),
        t0.elapsed()
    );
    assert_eq!(rows, w[500 * 4000..510 * 4000]);
    let t0 = Instant::now();
    assert_eq!(reader.read("E/spike")?, spike);
    assert_eq!(reader.read("E/V")?, v);
    println!("read and checked E/spike and E/V in {:.2?}", t0.elapsed());
    let report = reader.verify()?;
    println!(
        "verified {} chunks of {} tensors",
        report.chunks, report.tensors
    );
    Ok(())
}
