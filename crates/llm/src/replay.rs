//! Accelerator-speed replay: the workload and the cache run for real (real block sizes, real
//! transfers to and from the tier), but model compute is replaced by a time model of a
//! datacenter GPU serving a large model, and time passes with `std::thread::sleep`.

use std::time::Duration;

use oxmem_kv::BlockKey;
use serde::Serialize;

use crate::model::{Fnv, splitmix64};

/// A first-principles time model of one accelerator serving one model, one request at a time.
///
/// The default, [`AcceleratorModel::h100_llama3_8b`], is an NVIDIA H100 SXM serving
/// Llama-3-8B in bf16:
///
/// - **Parameters** 8.03 B, so a forward pass costs `2 × 8.03e9 ≈ 16.06 GFLOP` per token for the
///   weight matmuls (the LM head included), plus attention: `4 × layers × d_model × context`
///   FLOP per token (QKᵀ and PV, 2 FLOP per multiply-add) with 32 layers and d_model 4096.
/// - **Prefill** is compute-bound: H100 SXM dense BF16 peak is 989 TFLOPS; we assume 50 % model
///   FLOPs utilisation, i.e. about 30,800 tokens/s at short context.
/// - **Decode** (one token per step, batch 1) is bound by reading the weights: 16.06 GB of bf16
///   at 3.35 TB/s HBM3 with an assumed 80 % achieved bandwidth ≈ 6.0 ms per step, plus
///   reading the context's KV (131,072 B per token) at the same rate.
/// - **KV per token** is Llama-3-8B's real size: 32 layers × 8 KV heads × 128 head dim × 2 (K,
///   V) × 2 bytes (bf16) = 131,072 B.
///
/// Not modelled: batching of concurrent requests, kernel launch overheads, the cost of small
/// prefill chunks (a chunk costs its FLOPs at the same utilisation whatever its size), and the
/// PCIe hop between host memory and the GPU (transfers to and from the tier are real and timed
/// on this host instead).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcceleratorModel {
    /// Label used in reports, e.g. `simulated h100-8b`.
    pub label: String,
    /// Model parameters.
    pub params: f64,
    /// Decoder layers (for attention FLOPs).
    pub n_layers: usize,
    /// Width of the attention (query heads × head dim).
    pub d_model: usize,
    /// KV bytes per token.
    pub kv_bytes_per_token: usize,
    /// Vocabulary size (generated token ids are below it).
    pub vocab_size: usize,
    /// Peak dense FLOP/s.
    pub peak_flops: f64,
    /// Fraction of peak reached in prefill.
    pub prefill_mfu: f64,
    /// Bytes of weights read per decode step.
    pub weight_bytes: f64,
    /// Peak memory bandwidth, bytes/s.
    pub mem_bytes_per_s: f64,
    /// Fraction of peak bandwidth reached in decode.
    pub mem_efficiency: f64,
}

impl Default for AcceleratorModel {
    fn default() -> Self {
        Self::h100_llama3_8b()
    }
}

impl AcceleratorModel {
    /// H100 SXM serving Llama-3-8B in bf16 (see the type's docs for every number's source).
    pub fn h100_llama3_8b() -> Self {
        AcceleratorModel {
            label: "simulated h100-8b".into(),
            params: 8.03e9,
            n_layers: 32,
            d_model: 4096,
            kv_bytes_per_token: 32 * 8 * 128 * 2 * 2,
            vocab_size: 128_256,
            peak_flops: 989e12,
            prefill_mfu: 0.5,
            weight_bytes: 2.0 * 8.03e9,
            mem_bytes_per_s: 3.35e12,
            mem_efficiency: 0.8,
        }
    }

    /// Modelled time to prefill `n` tokens that follow `past` tokens of context.
    pub fn prefill_time(&self, n: usize, past: usize) -> Duration {
        let n_f = n as f64;
        // Sum over the chunk of each token's context length (past + i + 1).
        let ctx_sum = n_f * past as f64 + n_f * (n_f + 1.0) / 2.0;
        let flops = 2.0 * self.params * n_f + 4.0 * (self.n_layers * self.d_model) as f64 * ctx_sum;
        Duration::from_secs_f64(flops / (self.peak_flops * self.prefill_mfu))
    }

    /// Modelled time of one decode step with `context` tokens of KV.
    pub fn decode_time(&self, context: usize) -> Duration {
        let bytes = self.weight_bytes + (context * self.kv_bytes_per_token) as f64;
        Duration::from_secs_f64(bytes / (self.mem_bytes_per_s * self.mem_efficiency))
    }

    /// Bytes of one KV block of `block_tokens` tokens.
    pub fn block_bytes(&self, block_tokens: usize) -> usize {
        self.kv_bytes_per_token * block_tokens
    }

    /// The [`BlockKey`] namespace of replayed blocks.
    pub fn namespace(&self) -> u64 {
        let mut h = Fnv::new();
        for b in self.label.bytes() {
            h.write_u64(b as u64);
        }
        h.write_u64(self.kv_bytes_per_token as u64);
        h.finish()
    }

    /// A one-paragraph description of the time model and its assumptions, with the resulting
    /// rates.
    pub fn describe(&self) -> String {
        format!(
            "{label}: {p:.2} B params, {flop:.2} GFLOP/token + attention 4*{l}*{d}*context FLOP/token; \
             prefill at {mfu:.0}% of {peak:.0} TFLOPS (~{rate:.0} tokens/s at short context); \
             decode step = ({wb:.2} GB weights + context*{kv} B KV) / ({bw:.2} TB/s * {eff:.0}%) \
             = {step:.2} ms at context 0; KV {kv} B/token (32 layers x 8 KV heads x 128 x 2 (K,V) x 2 B bf16); \
             batch 1, no launch overheads; tier transfers are real and timed on this host",
            label = self.label,
            p = self.params / 1e9,
            flop = 2.0 * self.params / 1e9,
            l = self.n_layers,
            d = self.d_model,
            mfu = self.prefill_mfu * 100.0,
            peak = self.peak_flops / 1e12,
            rate = 1.0 / self.prefill_time(1, 0).as_secs_f64(),
            wb = self.weight_bytes / 1e9,
            kv = self.kv_bytes_per_token,
            bw = self.mem_bytes_per_s / 1e12,
            eff = self.mem_efficiency * 100.0,
            step = self.decode_time(0).as_secs_f64() * 1e3,
        )
    }
}

/// The synthetic content of a replayed block, a function of the key and the byte position, so
/// any copy can be checked byte for byte.
pub fn synth_block(key: &BlockKey, out: &mut [u8]) {
    let seed = block_seed(key);
    let mut words = out.chunks_exact_mut(8);
    for (i, w) in (&mut words).enumerate() {
        w.copy_from_slice(&synth_word(seed, i).to_le_bytes());
    }
    let n = out.len() / 8;
    let tail = &mut out[n * 8..];
    let last = synth_word(seed, n).to_le_bytes();
    let len = tail.len();
    tail.copy_from_slice(&last[..len]);
}

/// Word `i` of a block: the key's seed mixed with the word's position by one multiply, so any
/// misplaced, stale or foreign word differs, and generating or checking a block runs at memory
/// speed (the check must not dominate the transfer it verifies).
#[inline]
fn synth_word(seed: u64, i: usize) -> u64 {
    (i as u64 ^ (seed >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed
}

/// Whether `bytes` is exactly [`synth_block`] of `key`.
pub fn check_block(key: &BlockKey, bytes: &[u8]) -> bool {
    let seed = block_seed(key);
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    let n = bytes.len() / 8;
    // Compare whole words (no per-chunk memcmp), accumulating differences without branching.
    let diff = words.enumerate().fold(0u64, |acc, (i, w)| {
        let got = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        acc | (got ^ synth_word(seed, i))
    });
    diff == 0 && tail == &synth_word(seed, n).to_le_bytes()[..tail.len()]
}

fn block_seed(key: &BlockKey) -> u64 {
    let lo = u64::from_le_bytes(key.0[..8].try_into().unwrap_or([0; 8]));
    let hi = u64::from_le_bytes(key.0[8..].try_into().unwrap_or([0; 8]));
    splitmix64(lo ^ hi.rotate_left(29))
}

/// Replay's stand-in for greedy decoding: token `i` of the answer is a hash of the prompt and
/// the answer so far, so it is a deterministic function of the prompt like a real model's.
#[derive(Debug, Clone)]
pub(crate) struct HashDecoder {
    state: Fnv,
    vocab: u64,
}

impl HashDecoder {
    pub(crate) fn new(prompt: &[u32], vocab: usize) -> Self {
        let mut state = Fnv::new();
        for &t in prompt {
            state.write_u64(t as u64);
        }
        HashDecoder {
            state,
            vocab: vocab.max(1) as u64,
        }
    }

    pub(crate) fn next_token(&mut self) -> u32 {
        let t = (self.state.finish() % self.vocab) as u32;
        self.state.write_u64(t as u64);
        t
    }
}
