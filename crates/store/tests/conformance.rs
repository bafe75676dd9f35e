//! One suite for every backend: the file store, PostgreSQL and MariaDB must behave alike.
//! Each database test gets a fresh database on a throwaway server started for this test
//! binary (see `trellis-testdb`), so the suite needs no running service.

use std::path::Path;
use std::sync::Arc;

use trellis_core::status::Status;
use trellis_storage_api::conformance::*;
use trellis_store::{Error, FileStore, Shared, SqlStore};
use trellis_testdb::{Kind, Server};

/// Two handles on one store, as two processes would have (and the throwaway server of a
/// database store, stopped when the test ends).
fn open(kind: Option<Kind>, home: &Path) -> (Shared, Shared, Option<Server>) {
    let Some(kind) = kind else {
        let files = || -> Shared { Arc::new(FileStore::new(home)) };
        return (files(), files(), None);
    };
    let server = Server::start(kind).expect("start a throwaway server");
    let url = server.url();
    let connect = || -> Shared { Arc::new(SqlStore::connect(&url, home).expect("connect")) };
    (connect(), connect(), Some(server))
}

/// The same test for each backend: `file::x`, `postgres::x`, `mariadb::x`.
mod file {
    trellis_storage_api::conformance_tests!(|home| super::open(None, home));
}
mod postgres {
    use trellis_testdb::Kind;
    trellis_storage_api::conformance_tests!(|home| super::open(Some(Kind::Postgres), home));
}
mod mariadb {
    use trellis_testdb::Kind;
    trellis_storage_api::conformance_tests!(|home| super::open(Some(Kind::Mariadb), home));
}

/// A database that goes away mid-operation: the call waits and retries, health sees it
/// failing, and when the server is back the write lands once.
fn survives_a_database_restart(kind: Kind) {
    let mut server = Server::start(kind).expect("start a throwaway server");
    let home = tempfile::tempdir().unwrap();
    let store: Shared = Arc::new(SqlStore::connect(&server.url(), home.path()).unwrap());
    start(&*store, "etl", "before", Status::Succeeded);
    server.stop().unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.enqueue(&item("q", "during", 0)).unwrap();
            start(&*store, "etl", "during", Status::Queued);
        })
    };
    // Await the retry loop (the writer cannot finish while the server is down).
    while store.failing() == 0 {
        std::thread::yield_now();
    }
    assert!(store.probe().is_err(), "the probe sees the database away");
    server.restart().unwrap();
    writer.join().unwrap();
    assert_eq!(store.failing(), 0);
    store.probe().unwrap();
    let ids: Vec<String> = store
        .list("etl", 10)
        .unwrap()
        .into_iter()
        .map(|r| r.run_id.into())
        .collect();
    assert_eq!(ids, ["during", "before"]);
    let queued: Vec<String> = store
        .items("q")
        .unwrap()
        .into_iter()
        .map(|i| i.run_id.into())
        .collect();
    assert_eq!(queued, ["during"], "queued exactly once");
}

#[test]
fn postgres_restart_mid_operation() {
    survives_a_database_restart(Kind::Postgres);
}

#[test]
fn mariadb_restart_mid_operation() {
    survives_a_database_restart(Kind::Mariadb);
}

#[test]
fn an_unreachable_database_is_a_clear_error_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = tempfile::tempdir().unwrap();
    let url = format!("postgres://trellis:secret@127.0.0.1:{port}/trellis");
    let err = SqlStore::connect(&url, home.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        !text.contains("secret"),
        "the password is not shown: {text}"
    );
}

/// The log seam's suite against local files.
#[test]
fn local_logs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    logs_append_read_and_resend(&trellis_store::LocalLogs, &root);
    let refused = trellis_store::LogStore::len(&trellis_store::LocalLogs, "");
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    let escape = format!("{root}/../x.out");
    let refused = trellis_store::LogStore::append(&trellis_store::LocalLogs, &escape, b"x");
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
}
