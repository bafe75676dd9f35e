//! The web server as a user meets it: `trellis server` started for real, on port 0.

mod support;

use support::{Env, Server, client};

#[test]
fn refuses_public_address_without_auth() {
    let env = Env::new();
    let out = env
        .trellis()
        .args(["server", "--host", "0.0.0.0", "--port", "0"])
        .output()
        .expect("run trellis");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without authentication"), "{stderr}");
}

#[test]
fn serves_on_loopback_by_default() {
    let env = Env::new();
    let server = Server::start(&env, &[]);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    let _ = client();
}
