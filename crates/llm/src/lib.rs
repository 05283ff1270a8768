//! `oxmem-llm`: a small Llama-style model on candle, a paged KV cache whose evicted blocks go to
//! a [`oxmem_kv::KvTier`], the multi-turn workload and the recovery benchmark.

#![forbid(unsafe_code)]
