//! The DAG's `registry_auths`: credentials by registry host, sent with a pull of an image
//! from that registry. Written as Docker's `config.json` text (`{"auths": {...}}`) or as a
//! mapping of host to `base64(user:password)`, to a JSON text, or to
//! `{username, password}` / `{auth}`.

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde_json::Value;

/// Credentials by registry host, in the order written.
pub type Auths = Vec<(String, DockerCredentials)>;

pub fn parse(v: Option<&Value>) -> Result<Auths, String> {
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(text)) => {
            let doc: Value = serde_json::from_str(text)
                .map_err(|e| format!("registry_auths: not a Docker config JSON text ({e})"))?;
            match doc.get("auths") {
                Some(auths) => return parse(Some(auths)),
                None => return Err("registry_auths: the JSON text has no `auths`".into()),
            }
        }
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err("registry_auths: must be a mapping of registry to credentials".into());
        }
    };
    map.iter()
        .map(|(host, value)| Ok((normal_host(host), credentials(host, value)?)))
        .collect()
}

fn credentials(host: &str, value: &Value) -> Result<DockerCredentials, String> {
    let bad = |what: &str| format!("registry_auths.{host}: {what}");
    let (username, password) = match value {
        Value::String(text) if text.trim_start().starts_with('{') => {
            let inner: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
            return credentials(host, &inner);
        }
        Value::String(encoded) => {
            decode(encoded).ok_or_else(|| bad("not base64 of user:password"))?
        }
        Value::Object(map) => {
            for key in map.keys() {
                if !matches!(key.as_str(), "username" | "password" | "auth") {
                    return Err(bad(&format!(
                        "unknown key `{key}` (use username and password, or auth)"
                    )));
                }
            }
            let field = |k: &str| map.get(k).and_then(Value::as_str).map(String::from);
            match (field("username"), field("password"), field("auth")) {
                (Some(u), Some(p), None) => (u, p),
                (None, None, Some(auth)) => {
                    return credentials(host, &Value::String(auth));
                }
                _ => return Err(bad("give username and password, or auth")),
            }
        }
        _ => return Err(bad("must be a string or a mapping")),
    };
    Ok(DockerCredentials {
        username: Some(username),
        password: Some(password),
        serveraddress: Some(host.to_string()),
        ..Default::default()
    })
}

fn decode(encoded: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// `https://index.docker.io/v1/` and `index.docker.io` are Docker Hub's `docker.io`.
fn normal_host(host: &str) -> String {
    let bare = host
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or(host);
    match bare {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        other => other.to_string(),
    }
}

/// The registry an image is pulled from: its first path part when that names a host
/// (has a dot or a port, or is `localhost`), else Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// The credentials for pulling `image`, when any were given for its registry.
pub fn for_image(auths: &Auths, image: &str) -> Option<DockerCredentials> {
    let registry = registry_of(image);
    auths
        .iter()
        .find(|(host, _)| host == registry)
        .map(|(_, c)| c.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_written_form_gives_user_and_password() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("me:pw");
        let config =
            format!(r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{b64}"}}}}}}"#);
        let forms = [
            json!({"ghcr.io": {"username": "me", "password": "pw"}}),
            json!({"ghcr.io": b64}),
            json!({"ghcr.io": {"auth": b64}}),
            json!({"ghcr.io": r#"{"username": "me", "password": "pw"}"#}),
        ];
        for form in forms {
            let auths = parse(Some(&form)).expect("valid");
            let c = for_image(&auths, "ghcr.io/org/app:1").expect("ghcr.io matches");
            assert_eq!(
                (c.username.as_deref(), c.password.as_deref()),
                (Some("me"), Some("pw"))
            );
            assert!(for_image(&auths, "alpine").is_none(), "Docker Hub has none");
        }
        let hub = parse(Some(&Value::String(config))).expect("config.json text");
        assert!(for_image(&hub, "library/alpine:3").is_some());
        assert!(parse(Some(&json!({"ghcr.io": {"user": "x"}}))).is_err());
        assert!(parse(Some(&json!({"ghcr.io": "%%%"}))).is_err());
        assert_eq!(registry_of("localhost:5000/x"), "localhost:5000");
    }
}
