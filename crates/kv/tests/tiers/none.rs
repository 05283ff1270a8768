//! `NoTier` keeps nothing but still checks its arguments and counts.

use oxmem_kv::{KvTier, NoTier};

use crate::conformance::{Eviction, conformance};

#[test]
fn no_tier_passes_the_suite_as_a_store_that_keeps_nothing() {
    conformance(&|| Box::new(NoTier::new(1000)) as Box<dyn KvTier>, &|_| {
        Eviction::Nothing
    });
}
