//! The REST API as a client meets it: a real `trellis server` on port 0, real runs of
//! small DAGs, authentication with roles, hostile names, and the OpenAPI document.

mod support;

use std::path::Path;

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};
use support::{Env, Server, client, wait_for};

const HELLO: &str = "\
params:
  - WHO: world
steps:
  - name: greet
    command: echo \"hello ${WHO}\"
    output: GREETING
  - name: lines
    depends: [greet]
    command: printf 'one\\ntwo\\nthree\\nfour\\n'
";

const SLOW: &str = "steps:\n  - name: wait\n    command: sleep 30\n";

const CHOICE: &str = "\
params:
  - name: MODE
    enum: [fast, full]
    default: fast
steps:
  - name: show
    command: echo ${MODE}
";

/// Sends a request and returns its status and JSON body (`Null` when empty), checking
/// that any error body has the documented shape.
fn send(req: RequestBuilder) -> (StatusCode, Value) {
    let resp: Response = req.send().expect("request");
    let status = resp.status();
    let text = resp.text().expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    if status.is_client_error() || status.is_server_error() {
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{status}: error body without code and message: {body}"
        );
    }
    (status, body)
}

struct Api {
    http: Client,
    url: String,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            http: client(),
            url: format!("{}/api/v2", server.url),
        }
    }
    fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.http.get(format!("{}{path}", self.url)))
    }
    fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.http.post(format!("{}{path}", self.url)).json(&body))
    }
    fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.http.put(format!("{}{path}", self.url)).json(&body))
    }
    fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.http.patch(format!("{}{path}", self.url)).json(&body))
    }
    fn delete(&self, path: &str) -> (StatusCode, Value) {
        send(self.http.delete(format!("{}{path}", self.url)))
    }

    /// Waits until a run has a final status and returns it.
    fn wait_final(&self, name: &str, run_id: &str) -> Value {
        wait_for(60, "the run to end", || {
            let (status, run) = self.get(&format!("/dag-runs/{name}/{run_id}"));
            assert_eq!(status, StatusCode::OK, "{run}");
            let done = !matches!(
                run["status"].as_str(),
                Some("queued" | "running" | "not_started" | "retrying")
            );
            done.then_some(run)
        })
    }
}

#[test]
fn openapi_document_is_current_and_complete() {
    let env = Env::new();
    let server = Server::start(&env, &[]);
    let (status, doc) = Api::new(&server).get("/openapi.json");
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
    let paths = doc["paths"].as_object().expect("paths");
    let contract = [
        "/api/v2/dags",
        "/api/v2/dags/validate",
        "/api/v2/dags/{name}",
        "/api/v2/dags/{name}/spec",
        "/api/v2/dags/{name}/suspend",
        "/api/v2/dags/{name}/start",
        "/api/v2/dags/{name}/start-sync",
        "/api/v2/dags/{name}/enqueue",
        "/api/v2/dags/{name}/dag-runs",
        "/api/v2/dag-runs",
        "/api/v2/dag-runs/{name}/{run_id}",
        "/api/v2/dag-runs/{name}/{run_id}/stop",
        "/api/v2/dag-runs/{name}/{run_id}/retry",
        "/api/v2/dag-runs/{name}/{run_id}/restart",
        "/api/v2/dag-runs/{name}/{run_id}/outputs",
        "/api/v2/dag-runs/{name}/{run_id}/steps/{step}/log",
        "/api/v2/queues",
        "/api/v2/queues/{queue}/items/{run_id}",
        "/api/v2/workers",
        "/api/v2/openapi.json",
        "/api/v2/events",
        "/api/v2/dag-runs/{name}/{run_id}/events",
        "/api/v2/dag-runs/{name}/{run_id}/steps/{step}/log/stream",
        "/api/v2/webhooks/{name}",
        "/health",
        "/health/deep",
        "/server_info",
        "/metrics",
    ];
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let served = format!("{}\n", serde_json::to_string_pretty(&doc).expect("json"));
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&committed, &served).expect("write docs/openapi.json");
    }
    let stored = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        stored == served,
        "docs/openapi.json differs from the served document; regenerate it with\n  \
         UPDATE_OPENAPI=1 cargo test -p trellis-cli --test server_api openapi_document"
    );
    let missing: Vec<_> = contract
        .iter()
        .filter(|p| !paths.contains_key(**p))
        .collect();
    assert!(
        missing.is_empty(),
        "paths missing from the document: {missing:?}"
    );
}

#[test]
fn dag_files_are_created_validated_edited_and_deleted() {
    let env = Env::new();
    env.dag("hello", HELLO);
    let server = Server::start(&env, &[]);
    let api = Api::new(&server);

    let (status, body) = api.post("/dags", json!({"name": "new-one", "spec": HELLO}));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "new-one");
    assert_eq!(body["steps"][1]["depends"], json!(["greet"]));
    assert!(body["dag"].is_object());
    assert!(env.dags().join("new-one.yaml").is_file());
    let (status, _) = api.post("/dags", json!({"name": "new-one", "spec": HELLO}));
    assert_eq!(status, StatusCode::CONFLICT);

    let broken = "steps:\n  - name: a\n    command: echo\n    depends: [nope]\n";
    let (status, body) = api.post("/dags", json!({"name": "broken", "spec": broken}));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["line"], 4, "{body}");
    assert!(
        body["errors"][0]["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("spec::"))
    );
    assert!(!env.dags().join("broken.yaml").exists());

    let (status, body) = api.post("/dags/validate", json!({"spec": broken}));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["valid"], false);
    let (_, body) = api.post("/dags/validate", json!({"spec": HELLO, "name": "x"}));
    assert_eq!(body["valid"], true, "{body}");

    let (status, body) = api.put("/dags/new-one/spec", json!({"spec": broken}));
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let on_disk = std::fs::read_to_string(env.dags().join("new-one.yaml")).expect("file");
    assert_eq!(
        on_disk, HELLO,
        "an invalid spec must leave the file untouched"
    );
    let (status, body) = api.put("/dags/new-one/spec", json!({"spec": CHOICE}));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["steps"][0]["name"], "show");
    let (_, body) = api.get("/dags/new-one/spec");
    assert_eq!(body["spec"], CHOICE);

    let (status, body) = api.get("/dags?search=NEW&per_page=1");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 1);
    assert_eq!(body["dags"][0]["name"], "new-one");
    let (_, body) = api.get("/dags?per_page=1&page=2");
    assert_eq!(
        (
            body["total"].as_u64(),
            body["dags"].as_array().map(Vec::len)
        ),
        (Some(2), Some(1))
    );

    let (status, body) = api.post("/dags/hello/suspend", json!({"suspended": true}));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["suspended"], true);
    let (_, body) = api.get("/dags/hello");
    assert_eq!(body["suspended"], true);
    let (_, body) = api.post("/dags/hello/suspend", json!({"suspended": false}));
    assert_eq!(body["suspended"], false);

    let (status, body) = api.delete("/dags/new-one");
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(!env.dags().join("new-one.yaml").exists());
    let (status, _) = api.get("/dags/new-one");
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn hostile_names_and_bodies_get_json_errors_and_write_nothing() {
    let env = Env::new();
    env.dag("hello", HELLO);
    let server = Server::start(&env, &[]);
    let api = Api::new(&server);
    let before = listing(env.work.path());

    for path in [
        "/dags/..%2F..%2Fetc%2Fpasswd",
        "/dags/..%2Fhello/spec",
        "/dags/.hidden",
        "/dag-runs/..%2Fhello/r1",
        "/dag-runs/hello/..%2F..%2Fx",
        "/dag-runs/hello/r1/steps/greet/log",
        "/dags/nope",
        "/no-such-route",
    ] {
        let (status, _) = api.get(path);
        assert!(status.is_client_error(), "GET {path}: {status}");
    }
    for name in [
        "../evil",
        "a/b",
        "..",
        ".hidden",
        "sub/../../evil",
        "white space",
    ] {
        let (status, body) = api.post("/dags", json!({"name": name, "spec": HELLO}));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
    }
    let (status, _) = api.put("/dags/..%2Fevil/spec", json!({"spec": HELLO}));
    assert!(status.is_client_error());
    let (status, _) = api.delete("/queues/..%2Fq/items/r1");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(listing(env.work.path()), before, "no file may be created");

    let raw = |body: &str, content_type: &str| {
        send(
            api.http
                .post(format!("{}/dags", api.url))
                .header("content-type", content_type)
                .body(body.to_string()),
        )
    };
    assert_eq!(
        raw("{not json", "application/json").0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        raw(r#"{"name": 3}"#, "application/json").0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        raw("name=x", "text/plain").0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(api.get("/dag-runs?page=minus").0, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/dag-runs?status=bogus").0, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.patch("/dags", json!({})).0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        out.push(path.display().to_string());
        if path.is_dir() {
            out.extend(listing(&path));
        }
    }
    out.sort();
    out
}

#[test]
fn runs_start_finish_retry_and_restart() {
    let env = Env::new();
    env.dag("hello", HELLO);
    env.dag("choice", CHOICE);
    let server = Server::start(&env, &[]);
    let api = Api::new(&server);

    let (status, body) = api.post("/dags/hello/start", json!({"params": "WHO=api"}));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run_id = body["run_id"].as_str().expect("run id").to_string();
    let (status, _) = api.get(&format!("/dag-runs/hello/{run_id}"));
    assert_eq!(
        status,
        StatusCode::OK,
        "the run is readable right after a 202"
    );
    let run = api.wait_final("hello", &run_id);
    assert_eq!(run["status"], "succeeded", "{run}");
    let (_, body) = api.get(&format!("/dag-runs/hello/{run_id}/outputs"));
    assert_eq!(body["outputs"]["GREETING"], "hello api", "{body}");

    let log = |query: &str| api.get(&format!("/dag-runs/hello/{run_id}/steps/lines/log{query}"));
    let (status, chunk) = log("");
    assert_eq!(status, StatusCode::OK, "{chunk}");
    assert_eq!(chunk["text"], "one\ntwo\nthree\nfour\n");
    assert_eq!(chunk["complete"], true);
    assert_eq!(log("?offset=4&limit=4").1["text"], "two\n");
    let (_, tail) = log("?tail=2");
    assert_eq!(tail["text"], "three\nfour\n");
    assert_eq!(tail["next_offset"], tail["size"]);
    assert_eq!(log("?stream=stderr").1["text"], "");
    assert_eq!(log("?stream=other").0, StatusCode::BAD_REQUEST);
    let (status, _) = api.get(&format!("/dag-runs/hello/{run_id}/steps/nope/log"));
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, run) = api.post("/dags/hello/start-sync", json!({"timeout_sec": 60}));
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["steps"].as_array().map(Vec::len), Some(2));

    let (status, body) = api.post("/dags/choice/start", json!({"params": "MODE=bogus"}));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_params");
    let (status, _) = api.post("/dags/hello/start", json!({"run_id": run_id}));
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, body) = api.post(
        &format!("/dag-runs/hello/{run_id}/retry"),
        json!({"step": "nope"}),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let first = run_attempt(&api, &run_id);
    let (status, body) = api.post(
        &format!("/dag-runs/hello/{run_id}/retry"),
        json!({"step": "lines"}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for(60, "the retry to end", || {
        let run = api.wait_final("hello", &run_id);
        (run["attempt_id"] != first).then_some(run)
    });

    let (status, body) = api.post(&format!("/dag-runs/hello/{run_id}/restart"), json!({}));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let new_id = body["run_id"].as_str().expect("new run id").to_string();
    assert_ne!(new_id, run_id);
    let run = api.wait_final("hello", &new_id);
    assert_eq!(run["params"], json!(["WHO=api"]), "same params: {run}");

    let (_, body) = api.get("/dags/hello/dag-runs?limit=2");
    assert_eq!(body["runs"].as_array().map(Vec::len), Some(2));
    let (_, page) = api.get("/dag-runs?per_page=2");
    assert_eq!(page["total"], 3, "{page}");
    assert_eq!(page["has_more"], true);
    assert_eq!(page["runs"][0]["run_id"], new_id.as_str(), "newest first");
    let (_, page) = api.get("/dag-runs?name=hello&status=failed,aborted");
    assert_eq!(page["runs"], json!([]));
}

fn run_attempt(api: &Api, run_id: &str) -> Value {
    api.get(&format!("/dag-runs/hello/{run_id}")).1["attempt_id"].clone()
}

#[test]
fn a_long_run_is_stopped() {
    let env = Env::new();
    env.dag("slow", SLOW);
    let server = Server::start(&env, &[]);
    let api = Api::new(&server);
    let (status, body) = api.post("/dags/slow/start", json!({}));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run_id = body["run_id"].as_str().expect("run id").to_string();
    wait_for(30, "the step to run", || {
        let (_, run) = api.get(&format!("/dag-runs/slow/{run_id}"));
        (run["steps"][0]["status"] == "running").then_some(())
    });
    let (status, _) = api.post(&format!("/dag-runs/slow/{run_id}/retry"), json!({}));
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a running run cannot be retried"
    );
    let (status, body) = api.post(&format!("/dag-runs/slow/{run_id}/stop"), json!({}));
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        matches!(body["status"].as_str(), Some("cancelled" | "aborted")),
        "{body}"
    );
    let (status, sync) = api.post("/dags/slow/start-sync", json!({"timeout_sec": 1}));
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{sync}");

    // Restarting a running run stops it first, then starts a new run.
    let (_, body) = api.post("/dags/slow/start", json!({"run_id": "going"}));
    assert_eq!(body["run_id"], "going", "{body}");
    wait_for(30, "the step to run", || {
        let (_, run) = api.get("/dag-runs/slow/going");
        (run["steps"][0]["status"] == "running").then_some(())
    });
    let (status, body) = api.post("/dag-runs/slow/going/restart", json!({}));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (_, old) = api.get("/dag-runs/slow/going");
    assert!(
        matches!(old["status"].as_str(), Some("cancelled" | "aborted")),
        "{old}"
    );
    let new_id = body["run_id"].as_str().expect("new run id");
    let (status, _) = api.get(&format!("/dag-runs/slow/{new_id}"));
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.post(&format!("/dag-runs/slow/{new_id}/stop"), json!({}));
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn queue_items_are_listed_reprioritised_and_dequeued() {
    let env = Env::new();
    env.dag("hello", HELLO);
    let server = Server::start(&env, &[]);
    let api = Api::new(&server);
    for (id, priority) in [("q-a", 0), ("q-b", 0), ("q-c", 5)] {
        let body = json!({"run_id": id, "queue": "batch", "priority": priority});
        let (status, body) = api.post("/dags/hello/enqueue", body);
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["queue"], "batch");
    }
    let order = || {
        let (_, body) = api.get("/queues");
        let queue = body["queues"]
            .as_array()
            .and_then(|q| q.iter().find(|q| q["name"] == "batch").cloned())
            .expect("queue batch listed");
        let ids: Vec<String> = queue["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["run_id"].as_str().unwrap_or_default().to_string())
            .collect();
        ids
    };
    assert_eq!(order(), ["q-c", "q-a", "q-b"]);
    let (status, item) = api.patch("/queues/batch/items/q-b", json!({"priority": 9}));
    assert_eq!(status, StatusCode::OK, "{item}");
    assert_eq!(item["priority"], 9);
    assert_eq!(order(), ["q-b", "q-c", "q-a"]);
    let (_, run) = api.get("/dag-runs/hello/q-a");
    assert_eq!(run["status"], "queued");

    let (status, _) = api.delete("/queues/batch/items/q-a");
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(order(), ["q-b", "q-c"]);
    let (_, run) = api.get("/dag-runs/hello/q-a");
    assert_eq!(run["status"], "aborted");
    assert_eq!(
        api.delete("/queues/batch/items/q-a").0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.patch("/queues/batch/items/q-a", json!({"priority": 1}))
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = api.get("/workers");
    assert_eq!((status, body), (StatusCode::OK, json!({"workers": []})));
}

#[test]
fn roles_decide_who_may_do_what() {
    let env = Env::new();
    env.dag("hello", HELLO);
    let config = env.config(
        "auth:\n  basic: {username: admin, password: admin-pw}\n  users:\n    \
         - {username: vera, password: view-pw, role: viewer}\n    \
         - {username: otto, password: op-pw, role: operator}\n",
    );
    let out = env
        .trellis()
        .args(["token", "create", "--name", "ci", "--role", "operator"])
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let config = config.display().to_string();
    let server = Server::start(&env, &["--config", &config]);
    let api = Api::new(&server);
    let url = |path: &str| format!("{}{path}", api.url);
    let spec = json!({"spec": HELLO});

    assert_eq!(send(api.http.get(url("/dags"))).0, StatusCode::UNAUTHORIZED);
    let viewer = |r: RequestBuilder| send(r.basic_auth("vera", Some("view-pw")));
    let operator = |r: RequestBuilder| send(r.basic_auth("otto", Some("op-pw")));
    let ci = |r: RequestBuilder| send(r.bearer_auth(&token));
    let admin = |r: RequestBuilder| send(r.basic_auth("admin", Some("admin-pw")));

    assert_eq!(viewer(api.http.get(url("/dags"))).0, StatusCode::OK);
    let start = || api.http.post(url("/dags/hello/start")).json(&json!({}));
    assert_eq!(viewer(start()).0, StatusCode::FORBIDDEN);
    assert_eq!(operator(start()).0, StatusCode::ACCEPTED);
    assert_eq!(ci(start()).0, StatusCode::ACCEPTED);
    let edit = || api.http.put(url("/dags/hello/spec")).json(&spec);
    assert_eq!(ci(edit()).0, StatusCode::FORBIDDEN);
    assert_eq!(operator(edit()).0, StatusCode::FORBIDDEN);
    assert_eq!(admin(edit()).0, StatusCode::OK);
    let create = || {
        api.http
            .post(url("/dags"))
            .json(&json!({"name": "more", "spec": HELLO}))
    };
    assert_eq!(operator(create()).0, StatusCode::FORBIDDEN);
    assert!(!env.dags().join("more.yaml").exists());
    assert_eq!(admin(create()).0, StatusCode::CREATED);
    assert_eq!(
        admin(api.http.delete(url("/dags/more"))).0,
        StatusCode::NO_CONTENT
    );
    let (status, _) = viewer(api.http.post(url("/dags/validate")).json(&spec));
    assert_eq!(status, StatusCode::OK, "validating is reading");
}

#[test]
fn a_dag_name_may_look_like_an_option() {
    let env = Env::new();
    env.dag("-dash", HELLO);
    let server = Server::start(&env, &[]);
    let api = Api::new(&server);
    let (status, run) = api.post("/dags/-dash/start-sync", json!({}));
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "succeeded");
    let run_id = run["run_id"].as_str().expect("run id").to_string();
    let (status, body) = api.post(&format!("/dag-runs/-dash/{run_id}/retry"), json!({}));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    api.wait_final("-dash", &run_id);
    let (status, body) = api.post(&format!("/dag-runs/-dash/{run_id}/restart"), json!({}));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let new_id = body["run_id"].as_str().expect("new run id").to_string();
    assert_eq!(api.wait_final("-dash", &new_id)["status"], "succeeded");
}
