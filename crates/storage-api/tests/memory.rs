//! The conformance suite against the in-memory backend.

#![cfg(feature = "test-util")]

use std::sync::Arc;

use trellis_storage_api::conformance::*;
use trellis_storage_api::{MemStore, Shared};

/// A fresh store, and a second handle on it (as another process would have one).
fn open() -> (tempfile::TempDir, Shared, Shared) {
    let scratch = tempfile::tempdir().unwrap();
    let store: Shared = Arc::new(MemStore::new(scratch.path()));
    (scratch, store.clone(), store)
}

#[test]
fn runs_fold() {
    let (_d, s, _) = open();
    runs_fold_their_events(&*s);
}

#[test]
fn pages() {
    let (_d, s, _) = open();
    newest_first_and_pages(&*s);
}

#[test]
fn attempts() {
    let (_d, s, _) = open();
    attempts_children_and_definitions(&*s);
}

#[test]
fn queues() {
    let (_d, s, _) = open();
    queues_keep_order_and_give_each_item_once(&*s);
}

#[test]
fn racing_takers() {
    let (_d, s, _) = open();
    concurrent_takers_take_each_item_once(s);
}

#[test]
fn leader() {
    let (_d, s, o) = open();
    one_leader_and_fenced_writes(&*s, &*o);
}

#[test]
fn values() {
    let (_d, s, o) = open();
    named_values(&*s, &*o);
}

#[test]
fn coordinator_lease() {
    let (_d, s, o) = open();
    coordinators_lease_and_shared_values(&*s, &*o);
}
