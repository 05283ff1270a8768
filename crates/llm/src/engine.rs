//! The serving loop for one request: find reusable blocks (local, then tier), compute the rest
//! in canonical block-aligned chunks, decode greedily.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oxmem_kv::{BlockKey, KvTier};

use crate::LlmError;
use crate::cache::LocalCache;
use crate::model::{Model, argmax};
use crate::replay::{AcceleratorModel, HashDecoder, check_block, synth_block};

/// What computes the KV and the tokens.
#[derive(Debug, Clone, Copy)]
pub enum Backend<'a> {
    /// The real model on the CPU.
    Real(&'a Model),
    /// The accelerator time model (synthetic block contents, hash-decoded tokens).
    Replay(&'a AcceleratorModel),
}

impl Backend<'_> {
    /// Bytes of one block of `block_tokens`.
    pub fn block_bytes(&self, block_tokens: usize) -> usize {
        match self {
            Backend::Real(m) => m.config().block_bytes(block_tokens),
            Backend::Replay(a) => a.block_bytes(block_tokens),
        }
    }

    /// The block key namespace.
    pub fn namespace(&self) -> u64 {
        match self {
            Backend::Real(m) => m.config().namespace(),
            Backend::Replay(a) => a.namespace(),
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Backend::Real(m) => m.config().vocab_size,
            Backend::Replay(a) => a.vocab_size,
        }
    }
}

/// What one request did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOutcome {
    /// Generated tokens.
    pub tokens: Vec<u32>,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was computed.
    pub prefill_computed: usize,
    /// Prompt tokens whose KV was reused from the local cache.
    pub reused_local: usize,
    /// Prompt tokens whose KV was fetched from the tier.
    pub reused_tier: usize,
    /// Prompt tokens whose KV was taken from blocks evicted to the tier whose write had not
    /// completed yet (read-through of the write-back queue). No tier read happened, so they
    /// are not in `reused_tier` nor in `bytes_fetched`.
    pub reused_inflight: usize,
    /// Bytes read from the tier.
    pub bytes_fetched: u64,
    /// Bytes whose tier write was acknowledged while this request ran (writes are
    /// asynchronous: mostly earlier requests' evictions; a run's total is the cache's
    /// counter after [`Engine::finish`]).
    pub bytes_written: u64,
    /// Fetched blocks whose bytes were not what they should be (replay only; a real run
    /// cannot tell from the bytes alone). Such blocks are recomputed, not used.
    pub block_mismatches: u64,
    /// Time to the first generated token.
    pub ttft: Duration,
    /// Time of the whole request.
    pub total: Duration,
}

/// A local cache in front of a tier, serving requests one at a time.
///
/// Evicted blocks are written to the tier in the background (see [`crate::cache`]); a prefix
/// whose blocks are still being written is read from the write-back queue. Call
/// [`Engine::finish`] at the end of a run to wait for the writes and see their errors.
///
/// **Determinism.** A prompt's KV is computed in canonical chunks: chunk `i` is exactly tokens
/// `[i·B, (i+1)·B)` (B = `block_tokens`), attending to all earlier blocks; a trailing partial
/// block is the last chunk, from its block boundary. Only full blocks are cached, and the
/// last prompt token is always computed (at most `⌊(len−1)/B⌋` blocks are reused), because its
/// logits give the first token. Decode tokens' KV is never cached. So every block's bytes are
/// the same whether computed now, earlier, or fetched, and every mode generates the same
/// tokens (greedy argmax, ties to the lowest id).
#[derive(Debug)]
pub struct Engine<'a> {
    backend: Backend<'a>,
    cache: LocalCache,
    block_tokens: usize,
    namespace: u64,
    fetch_enabled: bool,
}

impl<'a> Engine<'a> {
    /// An engine with a local budget of `budget_bytes` (`None`: unlimited) evicting to `tier`.
    pub fn new(
        backend: Backend<'a>,
        budget_bytes: Option<u64>,
        tier: Arc<dyn KvTier>,
        block_tokens: usize,
    ) -> Result<Self, LlmError> {
        if block_tokens == 0 {
            return Err(LlmError::Config("block_tokens must be positive".into()));
        }
        let bb = backend.block_bytes(block_tokens);
        if tier.block_bytes() != bb {
            return Err(LlmError::Config(format!(
                "tier {} stores blocks of {} bytes, this model needs {bb}",
                tier.name(),
                tier.block_bytes()
            )));
        }
        let fetch_enabled = tier.name() != "none";
        Ok(Engine {
            namespace: backend.namespace(),
            cache: LocalCache::new(budget_bytes.unwrap_or(u64::MAX), bb, tier)?,
            backend,
            block_tokens,
            fetch_enabled,
        })
    }

    /// The local cache.
    pub fn cache(&self) -> &LocalCache {
        &self.cache
    }

    /// Waits until every evicted block handed to the tier has been written; returns the first
    /// write error not returned yet (by an earlier [`serve`](Engine::serve)).
    pub fn finish(&mut self) -> Result<(), LlmError> {
        self.cache.finish()
    }

    /// The keys of the full blocks of `tokens` under this engine's namespace.
    pub fn block_keys(&self, tokens: &[u32]) -> Vec<BlockKey> {
        BlockKey::chain(self.namespace, tokens, self.block_tokens)
    }

    /// Serves one request: prefill `prompt` (reusing what the cache and the tier hold) and
    /// generate `max_new` tokens greedily.
    pub fn serve(&mut self, prompt: &[u32], max_new: usize) -> Result<RequestOutcome, LlmError> {
        let t0 = Instant::now();
        if prompt.is_empty() || max_new == 0 {
            return Err(LlmError::Config(
                "a request needs a prompt and at least one token to generate".into(),
            ));
        }
        let written_before = self.cache.counters().bytes_written;
        let b = self.block_tokens;
        let len = prompt.len();
        let keys = self.block_keys(prompt);
        let reusable = ((len - 1) / b).min(keys.len());
        let mut pinned = Vec::with_capacity(keys.len());
        let result = self.serve_pinned(prompt, max_new, &keys[..], reusable, &mut pinned, t0);
        // Unpin even on error, so a failed request does not leak pins.
        let unpin = self.cache.unpin_all(&pinned);
        let mut out = result?;
        unpin?;
        out.bytes_written = self.cache.counters().bytes_written - written_before;
        out.total = t0.elapsed();
        Ok(out)
    }

    fn serve_pinned(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        keys: &[BlockKey],
        reusable: usize,
        pinned: &mut Vec<BlockKey>,
        t0: Instant,
    ) -> Result<RequestOutcome, LlmError> {
        let b = self.block_tokens;
        let len = prompt.len();
        let mut out = RequestOutcome {
            prompt_tokens: len,
            ..RequestOutcome::default()
        };
        // 1. Pin every reusable block held locally, so fetching others cannot evict them.
        let held: Vec<bool> = keys[..reusable]
            .iter()
            .map(|k| {
                let held = self.cache.pin(k);
                if held {
                    pinned.push(*k);
                }
                held
            })
            .collect();
        // 2. Walk the prefix: local blocks are used in place; a block evicted but still being
        // written is copied from the write-back queue; each run of blocks found in neither is
        // continued from the tier (one lookup, one batched read per run; usually there is a
        // single run, after the local prefix). The walk stops at the first block found nowhere.
        self.cache.poll_writes();
        let (mut local, mut from_tier, mut in_flight) = (0, 0, 0);
        let mut i = 0;
        while i < reusable {
            if held[i] {
                local += 1;
                i += 1;
                continue;
            }
            if !self.fetch_enabled {
                break;
            }
            if let Some(buf) = self.cache.copy_in_flight(&keys[i]) {
                // Our own bytes, never left the process: nothing to verify.
                self.cache.insert_pinned(keys[i], buf)?;
                pinned.push(keys[i]);
                in_flight += 1;
                i += 1;
                continue;
            }
            let j = (i..reusable)
                .find(|&x| held[x] || self.cache.is_in_flight(&keys[x]))
                .unwrap_or(reusable);
            let run = &keys[i..j];
            let tier = Arc::clone(self.cache.tier());
            let n = tier.contains_prefix(run)?.min(run.len());
            if n == 0 {
                break;
            }
            let mut bufs: Vec<Vec<u8>> = (0..n).map(|_| self.cache.take_buffer()).collect();
            let found = {
                let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|v| v.as_mut_slice()).collect();
                tier.get_many(&run[..n], &mut refs)?
            };
            let mut got = 0;
            for (k, buf) in run.iter().zip(bufs) {
                if !found.get(got).copied().unwrap_or(false) {
                    break;
                }
                out.bytes_fetched += buf.len() as u64;
                if let Backend::Replay(_) = self.backend {
                    if !check_block(k, &buf) {
                        out.block_mismatches += 1;
                        break;
                    }
                }
                self.cache.mark_in_tier(*k);
                self.cache.insert_pinned(*k, buf)?;
                pinned.push(*k);
                got += 1;
            }
            from_tier += got;
            i += got;
            if got < run.len() {
                break;
            }
        }
        let reused = i;
        debug_assert_eq!(reused, local + from_tier + in_flight);
        out.reused_local = local * b;
        out.reused_tier = from_tier * b;
        out.reused_inflight = in_flight * b;
        out.prefill_computed = len - reused * b;
        match self.backend {
            Backend::Real(model) => {
                let mut st = model.new_state(len + max_new)?;
                for k in &keys[..reused] {
                    let bytes = self.cache.get(k).ok_or_else(|| {
                        LlmError::Internal("a pinned block left the cache".into())
                    })?;
                    model.load_block(&mut st, b, bytes)?;
                }
                let mut logits = Vec::new();
                let mut s = reused * b;
                while s < len {
                    let e = (s + b).min(len);
                    logits = model.forward(&mut st, &prompt[s..e])?;
                    if e - s == b {
                        let mut buf = self.cache.take_buffer();
                        model.save_block(&st, s, b, &mut buf)?;
                        self.cache.insert_pinned(keys[s / b], buf)?;
                        pinned.push(keys[s / b]);
                    }
                    s = e;
                }
                let mut tokens = Vec::with_capacity(max_new);
                tokens.push(argmax(&logits));
                out.ttft = t0.elapsed();
                while tokens.len() < max_new {
                    let last = tokens[tokens.len() - 1];
                    logits = model.forward(&mut st, &[last])?;
                    tokens.push(argmax(&logits));
                }
                out.tokens = tokens;
            }
            Backend::Replay(acc) => {
                let mut deadline = Instant::now();
                let mut s = reused * b;
                while s < len {
                    let e = (s + b).min(len);
                    deadline += acc.prefill_time(e - s, s);
                    if e - s == b {
                        let mut buf = self.cache.take_buffer();
                        synth_block(&keys[s / b], &mut buf);
                        self.cache.insert_pinned(keys[s / b], buf)?;
                        pinned.push(keys[s / b]);
                    }
                    s = e;
                }
                sleep_until(deadline);
                let mut dec = HashDecoder::new(prompt, acc.vocab_size);
                let mut tokens = Vec::with_capacity(max_new);
                tokens.push(dec.next_token());
                out.ttft = t0.elapsed();
                while tokens.len() < max_new {
                    deadline += acc.decode_time(len + tokens.len());
                    sleep_until(deadline);
                    tokens.push(dec.next_token());
                }
                out.tokens = tokens;
            }
        }
        Ok(out)
    }
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Computes the KV blocks of every full block of `tokens` from scratch, canonically (one
/// block per forward, from position 0). Used to check that cached or fetched blocks are
/// bit-identical to recomputed ones.
pub fn compute_blocks(
    model: &Model,
    tokens: &[u32],
    block_tokens: usize,
) -> Result<Vec<Vec<u8>>, LlmError> {
    let n = tokens.len() / block_tokens;
    let mut st = model.new_state(n * block_tokens)?;
    let mut blocks = Vec::with_capacity(n);
    for i in 0..n {
        model.forward(&mut st, &tokens[i * block_tokens..(i + 1) * block_tokens])?;
        let mut buf = vec![0u8; model.config().block_bytes(block_tokens)];
        model.save_block(&st, i * block_tokens, block_tokens, &mut buf)?;
        blocks.push(buf);
    }
    Ok(blocks)
}
