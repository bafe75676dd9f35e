//! The conformance suite against the in-memory backend.

#![cfg(feature = "test-util")]

use std::sync::Arc;

use trellis_storage_api::{MemStore, Shared};

trellis_storage_api::conformance_tests!(|home: &std::path::Path| {
    let store: Shared = Arc::new(MemStore::new(home));
    (store.clone(), store, ())
});
