//! Every store against the same suite (`conformance`), plus what is particular to each: the
//! disk's `O_DIRECT` and damaged slots, Redis' server side, the pool's layout shared by two
//! processes.

mod conformance;
mod disk;
mod measure;
mod none;
mod pool;
mod pool_harness;
mod redis;
mod redis_server;
