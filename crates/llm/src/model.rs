//! A small Llama-style decoder on candle (CPU, f32) with seeded random weights.
//!
//! Token embedding, `n_layers` × (RMSNorm → attention with RoPE and grouped-query heads →
//! residual, RMSNorm → SwiGLU MLP → residual), final RMSNorm, LM head. No weights are
//! downloaded: every tensor is filled from a ChaCha8 stream seeded by [`ModelConfig::seed`], so
//! the same config gives the same model bit for bit in every process.
//!
//! The KV of a sequence lives in a [`KvState`]: per layer one K and one V tensor of shape
//! `(n_kv_heads, capacity, head_dim)`, filled left to right by [`Model::forward`] (computed) or
//! [`Model::load_block`] (copied from a cached block).

use candle_core::{DType, Device, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::LlmError;

/// The shape of the model and the seed of its weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// Width of the residual stream.
    pub dim: usize,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Number of query heads (`dim` must be a multiple).
    pub n_heads: usize,
    /// Number of key/value heads (divides `n_heads`; fewer than `n_heads` is grouped-query
    /// attention).
    pub n_kv_heads: usize,
    /// Width of the SwiGLU MLP.
    pub hidden_dim: usize,
    /// Vocabulary size (token ids are `0..vocab_size`).
    pub vocab_size: usize,
    /// Longest sequence the RoPE tables cover.
    pub max_seq_len: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for ModelConfig {
    /// The benchmark model: dim 512, 8 layers, 8 heads (8 KV heads), MLP 1376, vocab 32000
    /// (about 58 M parameters, 32 KiB of KV per token).
    fn default() -> Self {
        ModelConfig {
            dim: 512,
            n_layers: 8,
            n_heads: 8,
            n_kv_heads: 8,
            hidden_dim: 1376,
            vocab_size: 32_000,
            max_seq_len: 8192,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            seed: 0x0a11_ce55,
        }
    }
}

impl ModelConfig {
    /// A tiny model for tests: dim 64, 2 layers, 4 heads over 2 KV heads (GQA), vocab 512.
    pub fn tiny() -> Self {
        ModelConfig {
            dim: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            hidden_dim: 172,
            vocab_size: 512,
            max_seq_len: 4096,
            ..ModelConfig::default()
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Bytes of K and V, all layers, for one token: bf16, as serving systems keep the KV
    /// cache (the model computes in f32 and rounds K and V to bf16 as it stores them, in every
    /// mode, so a stored block loses nothing).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim() * 2
    }

    /// Bytes of one KV block of `block_tokens` tokens.
    pub fn block_bytes(&self, block_tokens: usize) -> usize {
        self.kv_bytes_per_token() * block_tokens
    }

    /// Number of parameters.
    pub fn params(&self) -> usize {
        let hd = self.head_dim();
        let attn = self.dim * (self.n_heads * hd) * 2 + self.dim * (self.n_kv_heads * hd) * 2;
        let mlp = 3 * self.dim * self.hidden_dim;
        2 * self.vocab_size * self.dim + self.n_layers * (attn + mlp + 2 * self.dim) + self.dim
    }

    /// The [`oxmem_kv::BlockKey`] namespace of this model: a hash of every field, so blocks of
    /// different models (or of the same shape with other weights) never share keys.
    pub fn namespace(&self) -> u64 {
        let mut h = Fnv::new();
        for v in [
            self.dim,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.hidden_dim,
            self.vocab_size,
        ] {
            h.write_u64(v as u64);
        }
        h.write_u64(self.rope_theta.to_bits() as u64);
        h.write_u64(self.norm_eps.to_bits() as u64);
        h.write_u64(self.seed);
        h.finish()
    }

    fn validate(&self) -> Result<(), LlmError> {
        let ok = self.dim > 0
            && self.n_layers > 0
            && self.n_heads > 0
            && self.n_kv_heads > 0
            && self.dim % self.n_heads == 0
            && self.n_heads % self.n_kv_heads == 0
            && self.head_dim() % 2 == 0
            && self.hidden_dim > 0
            && self.vocab_size > 1
            && self.max_seq_len > 0;
        if ok {
            Ok(())
        } else {
            Err(LlmError::Config(format!(
                "inconsistent model shape: {self:?}"
            )))
        }
    }
}

/// FNV-1a over 64-bit words: a stable, dependency-free hash (namespaces, replay tokens).
#[derive(Debug, Clone)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write_u64(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        // One splitmix64 round so that nearby inputs spread over all bits.
        splitmix64(self.0)
    }
}

/// One splitmix64 output for state `x`.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug)]
struct Layer {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    mlp_norm: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
}

/// The model: weights built once from the seed, shared (read-only) by every run.
#[derive(Debug)]
pub struct Model {
    cfg: ModelConfig,
    device: Device,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// The KV of one sequence: per layer, K and V of shape `(n_kv_heads, capacity, head_dim)`;
/// positions `0..len` are filled.
#[derive(Debug)]
pub struct KvState {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvState {
    /// Number of positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of positions this state can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A tensor of `shape` filled uniformly in `[-a, a)` from its own ChaCha8 stream.
fn uniform(
    seed: u64,
    stream: u64,
    a: f32,
    shape: &[usize],
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(stream)));
    let scale = 2.0 * a / (1u32 << 24) as f32;
    let data: Vec<f32> = (0..n)
        .map(|_| (rng.next_u32() >> 8) as f32 * scale - a)
        .collect();
    Tensor::from_vec(data, shape, dev)
}

impl Model {
    /// Builds the model from `cfg` (weights drawn from `cfg.seed`; takes a moment for the
    /// default size: about 58 M random numbers).
    pub fn new(cfg: &ModelConfig) -> Result<Model, LlmError> {
        cfg.validate()?;
        let dev = Device::Cpu;
        let hd = cfg.head_dim();
        let d = cfg.dim;
        let s = cfg.seed;
        // Uniform in [-a, a) has std a/sqrt(3): a = sqrt(3/fan_in) keeps each projection
        // variance-preserving; the output projections are further scaled by 1/sqrt(2 layers)
        // so the residual stream grows slowly.
        let a_in = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
        let res = 1.0 / ((2 * cfg.n_layers) as f32).sqrt();
        let mut stream = 0u64;
        let mut next = || {
            stream += 1;
            stream
        };
        let embed = uniform(s, next(), 3f32.sqrt(), &[cfg.vocab_size, d], &dev)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            layers.push(Layer {
                attn_norm: Tensor::ones(d, DType::F32, &dev)?,
                wq: uniform(s, next(), a_in(d), &[d, cfg.n_heads * hd], &dev)?,
                wk: uniform(s, next(), a_in(d), &[d, cfg.n_kv_heads * hd], &dev)?,
                wv: uniform(s, next(), a_in(d), &[d, cfg.n_kv_heads * hd], &dev)?,
                wo: uniform(s, next(), a_in(d) * res, &[cfg.n_heads * hd, d], &dev)?,
                mlp_norm: Tensor::ones(d, DType::F32, &dev)?,
                w_gate: uniform(s, next(), a_in(d), &[d, cfg.hidden_dim], &dev)?,
                w_up: uniform(s, next(), a_in(d), &[d, cfg.hidden_dim], &dev)?,
                w_down: uniform(
                    s,
                    next(),
                    a_in(cfg.hidden_dim) * res,
                    &[cfg.hidden_dim, d],
                    &dev,
                )?,
            });
        }
        let norm = Tensor::ones(d, DType::F32, &dev)?;
        let lm_head = uniform(s, next(), a_in(d) * 4.0, &[d, cfg.vocab_size], &dev)?;
        // RoPE tables (non-interleaved halves), computed in f64 then rounded once.
        let half = hd / 2;
        let mut cos = Vec::with_capacity(cfg.max_seq_len * half);
        let mut sin = Vec::with_capacity(cfg.max_seq_len * half);
        for p in 0..cfg.max_seq_len {
            for i in 0..half {
                let freq = 1.0 / (cfg.rope_theta as f64).powf(2.0 * i as f64 / hd as f64);
                let ang = p as f64 * freq;
                cos.push(ang.cos() as f32);
                sin.push(ang.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (cfg.max_seq_len, half), &dev)?;
        let sin = Tensor::from_vec(sin, (cfg.max_seq_len, half), &dev)?;
        Ok(Model {
            cfg: cfg.clone(),
            device: dev,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    /// The config this model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// An empty KV state for up to `capacity` positions.
    pub fn new_state(&self, capacity: usize) -> Result<KvState, LlmError> {
        if capacity > self.cfg.max_seq_len {
            return Err(LlmError::Config(format!(
                "sequence of {capacity} tokens exceeds max_seq_len {}",
                self.cfg.max_seq_len
            )));
        }
        let shape = (self.cfg.n_kv_heads, capacity.max(1), self.cfg.head_dim());
        let mut k = Vec::with_capacity(self.cfg.n_layers);
        let mut v = Vec::with_capacity(self.cfg.n_layers);
        for _ in 0..self.cfg.n_layers {
            k.push(Tensor::zeros(shape, DType::F32, &self.device)?);
            v.push(Tensor::zeros(shape, DType::F32, &self.device)?);
        }
        Ok(KvState {
            k,
            v,
            len: 0,
            capacity,
        })
    }

    /// Runs `tokens` at positions `state.len()..`, appends their K and V to `state`, and returns
    /// the logits of the last token.
    ///
    /// The result for a token depends on the batch it is computed in (matmul shapes change the
    /// floating-point reduction), so callers that need reproducible KV must always split a
    /// sequence the same way; the cache does (one block per call, aligned to blocks).
    pub fn forward(&self, state: &mut KvState, tokens: &[u32]) -> Result<Vec<f32>, LlmError> {
        let t = tokens.len();
        if t == 0 {
            return Err(LlmError::Config("forward of zero tokens".into()));
        }
        let pos = state.len;
        let ctx = pos + t;
        if ctx > state.capacity {
            return Err(LlmError::Config(format!(
                "KV state of {} positions cannot take {ctx}",
                state.capacity
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&x| x as usize >= self.cfg.vocab_size) {
            return Err(LlmError::Config(format!(
                "token {bad} outside the vocabulary"
            )));
        }
        let c = &self.cfg;
        let hd = c.head_dim();
        let group = c.n_heads / c.n_kv_heads;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?; // (t, dim)
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        // Causal mask over the whole context, one row per (group member, token).
        let mut mask = Vec::with_capacity(group * t * ctx);
        for _ in 0..group {
            for i in 0..t {
                for j in 0..ctx {
                    mask.push(if j <= pos + i {
                        0.0f32
                    } else {
                        f32::NEG_INFINITY
                    });
                }
            }
        }
        let mask = Tensor::from_vec(mask, (group * t, ctx), &self.device)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.norm_eps)?;
            let q = h
                .matmul(&layer.wq)?
                .reshape((1, t, c.n_heads, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let k = h
                .matmul(&layer.wk)?
                .reshape((1, t, c.n_kv_heads, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            let v = h
                .matmul(&layer.wv)?
                .reshape((t, c.n_kv_heads, hd))?
                .transpose(0, 1)?
                .contiguous()?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?.squeeze(0)?;
            // The cache holds bf16: round here, so attention sees exactly what a block saved
            // and loaded again holds.
            let k = k.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
            let v = v.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
            state.k[l].slice_set(&k, 1, pos)?;
            state.v[l].slice_set(&v, 1, pos)?;
            let kc = state.k[l].narrow(1, 0, ctx)?;
            let vc = state.v[l].narrow(1, 0, ctx)?;
            // (n_heads, t, hd) -> (n_kv_heads, group * t, hd): the heads sharing a KV head.
            let q = q.reshape((c.n_kv_heads, group * t, hd))?;
            let att = q
                .matmul(&kc.t()?)?
                .affine(scale, 0.0)?
                .broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let o = att.matmul(&vc)?; // (n_kv_heads, group * t, hd)
            let o = o
                .reshape((c.n_heads, t, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((t, c.n_heads * hd))?;
            x = (x + o.matmul(&layer.wo)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.mlp_norm, c.norm_eps)?;
            let g = candle_nn::ops::silu(&h.matmul(&layer.w_gate)?)?;
            let u = h.matmul(&layer.w_up)?;
            x = (x + (g * u)?.matmul(&layer.w_down)?)?;
        }
        state.len = ctx;
        let last = x.narrow(0, t - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, c.norm_eps)?;
        let logits = last.matmul(&self.lm_head)?.squeeze(0)?;
        Ok(logits.to_vec1::<f32>()?)
    }

    /// Serializes the K and V of positions `start..start + block_tokens` into `out`
    /// ([`ModelConfig::block_bytes`] bytes): for each layer, K then V, each
    /// `[n_kv_heads][block_tokens][head_dim]` bf16 little-endian (exact: the values are bf16
    /// already).
    pub fn save_block(
        &self,
        state: &KvState,
        start: usize,
        block_tokens: usize,
        out: &mut [u8],
    ) -> Result<(), LlmError> {
        if start + block_tokens > state.len || out.len() != self.cfg.block_bytes(block_tokens) {
            return Err(LlmError::Config(
                "save_block outside the filled KV or wrong buffer size".into(),
            ));
        }
        let mut off = 0;
        for l in 0..self.cfg.n_layers {
            for t in [&state.k[l], &state.v[l]] {
                let vals = t
                    .narrow(1, start, block_tokens)?
                    .contiguous()?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                for f in vals {
                    let bf16 = (f.to_bits() >> 16) as u16;
                    out[off..off + 2].copy_from_slice(&bf16.to_le_bytes());
                    off += 2;
                }
            }
        }
        Ok(())
    }

    /// Appends a block saved by [`save_block`](Model::save_block) at position `state.len()`
    /// (which must be where the block starts).
    pub fn load_block(
        &self,
        state: &mut KvState,
        block_tokens: usize,
        bytes: &[u8],
    ) -> Result<(), LlmError> {
        let start = state.len;
        if start + block_tokens > state.capacity
            || bytes.len() != self.cfg.block_bytes(block_tokens)
        {
            return Err(LlmError::Config(
                "load_block past capacity or wrong block size".into(),
            ));
        }
        let shape = (self.cfg.n_kv_heads, block_tokens, self.cfg.head_dim());
        let per = bytes.len() / (2 * self.cfg.n_layers);
        for l in 0..self.cfg.n_layers {
            for (i, dst) in [&state.k[l], &state.v[l]].into_iter().enumerate() {
                let off = (2 * l + i) * per;
                let vals: Vec<f32> = bytes[off..off + per]
                    .chunks_exact(2)
                    .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                    .collect();
                dst.slice_set(&Tensor::from_vec(vals, shape, &self.device)?, 1, start)?;
            }
        }
        state.len = start + block_tokens;
        Ok(())
    }
}

/// The index of the largest logit; ties go to the lowest index (NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || (logits[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best as u32
}
