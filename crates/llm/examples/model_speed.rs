//! Measures the default model's prefill and decode speed on this machine, and whether the
//! KV of a block depends on candle's thread count (run it with RAYON_NUM_THREADS=1 and =2 and
//! compare the printed digest).
//!
//! `cargo run --release -p oxmem-llm --example model_speed`

use std::time::Instant;

use oxmem_llm::{Model, ModelConfig, compute_blocks};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tiny = std::env::args().any(|a| a == "--tiny");
    let cfg = if tiny {
        ModelConfig::tiny()
    } else {
        ModelConfig::default()
    };
    let t = Instant::now();
    let model = Model::new(&cfg)?;
    println!(
        "model: {} params, built in {:.2}s",
        cfg.params(),
        t.elapsed().as_secs_f64()
    );
    let b = 32;
    let n = 1024;
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (i * 7919 + 13) % cfg.vocab_size as u32)
        .collect();
    let t = Instant::now();
    let blocks = compute_blocks(&model, &tokens, b)?;
    let el = t.elapsed().as_secs_f64();
    println!(
        "prefill {n} tokens in {b}-token chunks: {el:.2}s = {:.0} tokens/s",
        n as f64 / el
    );
    let mut h: u64 = 0xcbf29ce484222325;
    for blk in &blocks {
        for &x in blk {
            h ^= x as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    println!(
        "kv digest {h:016x} (threads: RAYON_NUM_THREADS={:?})",
        std::env::var("RAYON_NUM_THREADS").ok()
    );
    let mut st = model.new_state(n + 64)?;
    for blk in &blocks {
        model.load_block(&mut st, b, blk)?;
    }
    let t = Instant::now();
    let mut last = 1u32;
    let mut out = Vec::new();
    for _ in 0..32 {
        let logits = model.forward(&mut st, &[last])?;
        last = oxmem_llm::argmax(&logits);
        out.push(last);
    }
    println!(
        "decode at context {n}: {:.1} ms/token; tokens {:?}",
        t.elapsed().as_secs_f64() * 1e3 / 32.0,
        &out[..16]
    );
    Ok(())
}
