//! Times opening an archive and viewing one tensor: `cargo run --release --example open_speed -- FILE [NAME]`.
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: open_speed FILE [NAME]");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut best = f64::MAX;
    let mut total = 0.0;
    // FLUSH=1: touch (and free) 128 MiB of fresh memory before each open, as a program
    // that has been doing other work would: caches and TLB start cold.
    let flush = std::env::var_os("FLUSH").is_some();
    for _ in 0..rounds {
        if flush {
            let mut v = vec![0u8; 128 << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
        }
        let t = Instant::now();
        let r = bpz::Reader::open(path).expect("open");
        if let Some(name) = args.get(2) {
            std::hint::black_box(r.view(name).expect("view"));
        }
        let dt = t.elapsed().as_secs_f64();
        best = best.min(dt);
        total += dt;
    }
    println!(
        "open{}: best {:.1} us, mean {:.1} us",
        if args.len() > 2 { " + view" } else { "" },
        best * 1e6,
        total / rounds as f64 * 1e6
    );
}
