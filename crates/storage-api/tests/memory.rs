//! The conformance suite against the in-memory backend.

#![cfg(feature = "test-util")]

use std::sync::Arc;

use trellis_storage_api::conformance::*;
use trellis_storage_api::{MemStore, Shared};

/// One test per check: a fresh store `s`, and `o`, a second handle on it (as another
/// process would have one).
macro_rules! suite {
    ($($name:ident: |$s:ident, $o:ident| $body:expr;)*) => {
        $(#[test]
        fn $name() {
            let scratch = tempfile::tempdir().unwrap();
            let $s: Shared = Arc::new(MemStore::new(scratch.path()));
            let $o = $s.clone();
            let _ = &$o;
            $body
        })*
    };
}

suite! {
    runs_fold: |s, o| runs_fold_their_events(&*s);
    pages: |s, o| newest_first_and_pages(&*s);
    attempts: |s, o| attempts_children_and_definitions(&*s);
    queues: |s, o| queues_keep_order_and_give_each_item_once(&*s);
    racing_takers: |s, o| concurrent_takers_take_each_item_once(s);
    leader: |s, o| one_leader_and_fenced_writes(&*s, &*o);
    values: |s, o| named_values(&*s, &*o);
    coordinator_lease: |s, o| coordinators_lease_and_shared_values(&*s, &*o);
}
