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
fn serves_on_loopback_by_default_and_only_to_localhost_names() {
    let env = Env::new();
    let server = Server::start(&env, &[]);
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    let health = client()
        .get(format!("{}/health", server.url))
        .send()
        .expect("health");
    assert_eq!(health.status(), 200);
    // A page on another site that resolves its name to 127.0.0.1 (DNS rebinding) sends
    // its own Host: with auth off, the server refuses it.
    let rebound = client()
        .get(format!("{}/api/v2/dags", server.url))
        .header("Host", "attacker.example")
        .send()
        .expect("request");
    assert_eq!(rebound.status(), 403);
    let body: serde_json::Value = rebound.json().expect("JSON error");
    assert_eq!(body["error"]["code"], "forbidden");
}

#[test]
fn serves_https_with_the_given_certificate() {
    let env = Env::new();
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_file, key_file) = (env.path("cert.pem"), env.path("key.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    let (c, k) = (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    );
    let server = Server::start(&env, &["--tls-cert", &c, "--tls-key", &k]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let trusted = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("pem"))
        .build()
        .expect("client");
    let info: serde_json::Value = trusted
        .get(format!("{}/server_info", server.url))
        .send()
        .expect("https request")
        .json()
        .expect("JSON");
    assert_eq!(info["tls"], true, "{info}");
    // A client that does not trust the certificate is refused by its own TLS check.
    assert!(
        client()
            .get(format!("{}/health", server.url))
            .send()
            .is_err()
    );
}
