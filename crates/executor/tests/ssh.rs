//! `ssh` and `sftp` steps against a real OpenSSH server (`trellis_testdb::sshd`, on a
//! loopback port), each run through the executor seam as the engine runs it: `start`,
//! then `wait`. The server is local, so a remote process is checked in this machine's
//! `/proc`. Skipped (with a message) where sshd is not installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trellis_executor::{Mask, Outcome, Registry, StepRequest, Work};
use trellis_testdb::sshd::Sshd;

fn sshd() -> Option<Sshd> {
    if !Sshd::available() {
        eprintln!("skipped: sshd is not installed (see crates/testdb/SETUP.md)");
        return None;
    }
    Some(Sshd::start().expect("start sshd"))
}

/// The connection keys that reach `sshd`, strict host-key checking on.
fn conn(sshd: &Sshd) -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    map.insert("host".into(), json!("127.0.0.1"));
    map.insert("port".into(), json!(sshd.port()));
    map.insert("user".into(), json!(sshd.user()));
    map.insert("key".into(), json!(sshd.key_path()));
    map.insert("strict_host_key".into(), json!(true));
    map.insert("known_host_file".into(), json!(sshd.known_hosts()));
    map.insert("timeout".into(), json!("10s"));
    map
}

/// `conn` with `extra` laid over it.
fn with(sshd: &Sshd, extra: Value) -> Value {
    let mut map = conn(sshd);
    if let Value::Object(extra) = extra {
        map.extend(extra);
    }
    Value::Object(map)
}

/// A directory the login user (another user when the tests run as root) can write.
fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

fn request(dir: &Path, work: Work, config: Value) -> StepRequest {
    StepRequest {
        name: format!("ssh-test-{}", dir.display()),
        work,
        env: Vec::new(),
        working_dir: None,
        config,
        stdout: dir.join("stdout.log"),
        stderr: dir.join("stderr.log"),
        timeout: None,
        stop_signal: Signal::SIGTERM,
        grace: Duration::from_secs(1),
        mask: None,
        labels: BTreeMap::new(),
        record: None,
    }
}

fn line(command: &str) -> Work {
    Work::Line(command.to_string())
}

/// Runs `req` to its end through the `kind` executor; its outcome, stdout and stderr.
async fn run(kind: &str, req: &StepRequest) -> (Outcome, String, String) {
    let registry = Registry::builtin();
    let executor = registry.get(kind).expect("a built-in executor");
    let handle = executor.start(req).await.expect("start");
    let outcome = executor.wait(&handle, req, CancellationToken::new()).await;
    (outcome, read(&req.stdout), read(&req.stderr))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls `check` every 20 ms until it answers, at most `limit`.
async fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process runs (a zombie is as good as gone: it was killed, not yet reaped).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A remote `sleep 300` in the background whose pid lands in `<dir>/pid` (written whole).
fn sleeper(dir: &Path, ignore_term: bool) -> Work {
    let d = dir.display();
    let trap = if ignore_term { "trap '' TERM\n" } else { "" };
    Work::Script {
        program: None,
        text: format!("{trap}sleep 300 &\necho $! > {d}/pid.tmp\nmv {d}/pid.tmp {d}/pid\nwait\n"),
    }
}

async fn sleeper_pid(dir: &Path) -> u32 {
    let file = dir.join("pid");
    let pid = eventually(Duration::from_secs(30), "the remote pid", || {
        std::fs::read_to_string(&file).ok()
    })
    .await;
    let pid: u32 = pid.trim().parse().expect("a pid");
    assert!(running(pid), "the remote sleep runs");
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_lands_in_the_logs_and_the_exit_code_is_the_remotes() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(
        dir.path(),
        line("echo to-out; echo to-err >&2; exit 3"),
        with(&sshd, json!({})),
    );
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(3), "stderr: {stderr}");
    assert_eq!(stdout, "to-out\n");
    assert_eq!(stderr, "to-err\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_command_exits_zero() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(
        dir.path(),
        Work::Argv(vec![
            "printf".into(),
            "%s\\n".into(),
            "it's one word".into(),
        ]),
        with(&sshd, json!({})),
    );
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(stdout, "it's one word\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steps_env_is_exported_remotely() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // The engine puts the step's own `env` under `with: env`; the rest of the run's
    // variables (a secret among them) never reach the host.
    let mut req = request(
        dir.path(),
        line(
            r#"printf '%s|%s|%s\n' "$GREETING" "$TRICKY" "${DB_PASSWORD:-unset}"; sh -c 'echo "child sees $GREETING"'"#,
        ),
        with(
            &sshd,
            json!({"env": {"GREETING": "hello world", "TRICKY": "it's $HOME `id`"}}),
        ),
    );
    req.env = vec![("DB_PASSWORD".into(), "s3cret".into())];
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(
        stdout,
        "hello world|it's $HOME `id`|unset\nchild sees hello world\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_runs_in_the_configured_working_dir() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = shared_dir();
    let req = request(
        dir.path(),
        line("pwd"),
        with(&sshd, json!({"working_dir": remote.path()})),
    );
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(stdout.trim_end(), remote.path().display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_working_dir_fails_the_step() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(
        dir.path(),
        line("echo should-not-run"),
        with(&sshd, json!({"working_dir": "/no/such/dir"})),
    );
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(1), "stderr: {stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("/no/such/dir"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_line_script_runs() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "x=1\nfor i in 1 2 3; do\n  x=$((x * 2))\ndone\necho \"x=$x\"\n\
                  read -r nothing || echo 'stdin is empty'\nexit 4\n";
    let req = request(
        dir.path(),
        Work::Script {
            program: None,
            text: script.into(),
        },
        with(&sshd, json!({})),
    );
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(4), "stderr: {stderr}");
    assert_eq!(stdout, "x=8\nstdin is empty\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_runs_under_its_own_program() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(
        dir.path(),
        Work::Script {
            program: Some("/bin/bash".into()),
            text: "words=(a b c)\necho \"${#words[@]} words, $0\"\n".into(),
        },
        with(&sshd, json!({})),
    );
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert!(stdout.starts_with("3 words, "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_key_fails_with_strict_checking() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("known_hosts");
    std::fs::write(&empty, "").expect("write");
    let req = request(
        dir.path(),
        line("echo should-not-run"),
        with(&sshd, json!({"known_host_file": empty})),
    );
    let (outcome, stdout, _) = run("ssh", &req).await;
    let Outcome::Failed { reason, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("Host key verification failed"), "{reason}");
    assert_eq!(stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_fails_with_the_reason() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("stranger");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
    let req = request(
        dir.path(),
        line("echo should-not-run"),
        with(&sshd, json!({"key": key})),
    );
    let (outcome, stdout, _) = run("ssh", &req).await;
    let Outcome::Failed { reason, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("Permission denied"), "{reason}");
    assert_eq!(stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_fails_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = json!({"host": "127.0.0.1", "port": port, "user": "nobody",
                        "strict_host_key": false, "timeout": 10});
    let req = request(dir.path(), line("true"), config);
    let (outcome, _, _) = run("ssh", &req).await;
    let Outcome::Failed { reason, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("Connection refused"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_kills_the_remote_process_group() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = shared_dir();
    let req = request(
        dir.path(),
        sleeper(remote.path(), false),
        with(&sshd, json!({})),
    );
    let registry = Registry::builtin();
    let ssh = registry.get("ssh").expect("ssh");
    let handle = ssh.start(&req).await.expect("start");
    let cancel = CancellationToken::new();
    let waiting = {
        let (ssh, handle, req, cancel) = (ssh.clone(), handle.clone(), req.clone(), cancel.clone());
        tokio::spawn(async move { ssh.wait(&handle, &req, cancel).await })
    };
    let pid = sleeper_pid(remote.path()).await;
    cancel.cancel();
    assert_eq!(waiting.await.expect("join"), Outcome::Cancelled);
    eventually(Duration::from_secs(10), "the remote sleep to end", || {
        (!running(pid)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_group_ignoring_the_stop_signal_is_killed_after_the_grace_period() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = shared_dir();
    let mut req = request(
        dir.path(),
        sleeper(remote.path(), true),
        with(&sshd, json!({})),
    );
    req.grace = Duration::from_millis(500);
    let registry = Registry::builtin();
    let ssh = registry.get("ssh").expect("ssh");
    let handle = ssh.start(&req).await.expect("start");
    let cancel = CancellationToken::new();
    let waiting = {
        let (ssh, handle, req, cancel) = (ssh.clone(), handle.clone(), req.clone(), cancel.clone());
        tokio::spawn(async move { ssh.wait(&handle, &req, cancel).await })
    };
    let pid = sleeper_pid(remote.path()).await;
    cancel.cancel();
    assert_eq!(waiting.await.expect("join"), Outcome::Cancelled);
    eventually(Duration::from_secs(10), "the remote sleep to end", || {
        (!running(pid)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_remote_process_group() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = shared_dir();
    let mut req = request(
        dir.path(),
        sleeper(remote.path(), false),
        with(&sshd, json!({})),
    );
    let registry = Registry::builtin();
    let ssh = registry.get("ssh").expect("ssh");
    let handle = ssh.start(&req).await.expect("start");
    // The timeout runs from `wait`: started once the remote sleep is known to run.
    let pid = sleeper_pid(remote.path()).await;
    req.timeout = Some(Duration::from_millis(200));
    let outcome = ssh.wait(&handle, &req, CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::TimedOut);
    eventually(Duration::from_secs(10), "the remote sleep to end", || {
        (!running(pid)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_in_both_logs() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut req = request(
        dir.path(),
        line("echo token=s3cret; echo s3cret-again >&2"),
        with(&sshd, json!({})),
    );
    req.mask = Some(Arc::new(Mask::new(["s3cret".to_string()])));
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(stdout, "token=*****\n");
    assert_eq!(stderr, "*****-again\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bastion_reaches_the_host() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // The same server serves as the jump host: ssh to it, then forward to itself.
    let bastion = json!({"host": "127.0.0.1", "port": sshd.port(), "user": sshd.user(),
                         "key": sshd.key_path()});
    let req = request(
        dir.path(),
        line("echo through the bastion"),
        with(&sshd, json!({"bastion": bastion})),
    );
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(stdout, "through the bastion\n");
}

#[test]
fn check_rejects_unknown_keys_and_bad_values() {
    let registry = Registry::builtin();
    let ssh = registry.get("ssh").expect("ssh");
    let cases = [
        (json!({"host": "h", "hots": "x"}), "unknown key `hots`"),
        (json!({"host": "h", "port": "ssh"}), "port"),
        (json!({"host": "h", "port": 70000}), "port"),
        (json!({"host": "h", "timeout": "soon"}), "timeout"),
        (json!({"host": "h", "shell": 5}), "shell"),
        (json!({"host": "h", "shell": ""}), "shell"),
        (
            json!({"host": "h", "strict_host_key": "maybe"}),
            "strict_host_key",
        ),
        (
            json!({"host": "h", "bastion": {"host": "b", "hots": 1}}),
            "hots",
        ),
        (json!("host"), "mapping"),
    ];
    for (config, wanted) in cases {
        let err = ssh.check(&config).expect_err(&config.to_string());
        assert!(err.contains(wanted), "{config}: {err}");
    }
    ssh.check(&json!({"host": "h", "port": "${PORT}", "timeout": "30s", "shell": "bash -e"}))
        .expect("a good config");
    ssh.check(&Value::Null)
        .expect("no config: the DAG's ssh: section");

    let sftp = registry.get("sftp").expect("sftp");
    let cases = [
        (json!({"source": "a"}), "destination"),
        (
            json!({"source": "a", "destination": "b", "direction": "sideways"}),
            "sideways",
        ),
        (
            json!({"source": "a", "destination": "b", "colour": 1}),
            "colour",
        ),
        (Value::Null, "source"),
    ];
    for (config, wanted) in cases {
        let err = sftp.check(&config).expect_err(&config.to_string());
        assert!(err.contains(wanted), "{config}: {err}");
    }
}

// --- sftp ---

fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                files.insert(path.strip_prefix(root).expect("under").to_path_buf(), bytes);
            }
        }
    }
    files
}

fn sftp_config(sshd: &Sshd, source: &Path, destination: &Path, direction: &str) -> Value {
    with(
        sshd,
        json!({"source": source, "destination": destination, "direction": direction}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_uploads_a_file_to_new_parents_and_downloads_it_back() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = shared_dir();
    let source = dir.path().join("data.bin");
    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&source, &bytes).expect("write");
    let target = remote.path().join("a/b c/d/data.bin");

    let up = request(
        dir.path(),
        Work::Default,
        sftp_config(&sshd, &source, &target, "upload"),
    );
    let (outcome, stdout, stderr) = run("sftp", &up).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(
        stdout,
        format!(
            "Uploaded {} (70000 bytes) to {}\n",
            source.display(),
            target.display()
        )
    );
    assert_eq!(std::fs::read(&target).expect("uploaded"), bytes);
    let left: Vec<_> = std::fs::read_dir(target.parent().expect("parent"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["data.bin"], "no temporary file is left behind");

    let back_dir = tempfile::tempdir().expect("tempdir");
    let back = back_dir.path().join("x/y/back.bin");
    let down = request(
        back_dir.path(),
        Work::Default,
        sftp_config(&sshd, &target, &back, "download"),
    );
    let (outcome, stdout, stderr) = run("sftp", &down).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(
        stdout,
        format!(
            "Downloaded {} (70000 bytes) to {}\n",
            target.display(),
            back.display()
        )
    );
    assert_eq!(std::fs::read(&back).expect("downloaded"), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_replaces_an_existing_file() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = shared_dir();
    let source = dir.path().join("v.txt");
    let target = remote.path().join("v.txt");
    for version in ["first\n", "second\n"] {
        std::fs::write(&source, version).expect("write");
        let up = request(
            dir.path(),
            Work::Default,
            sftp_config(&sshd, &source, &target, "upload"),
        );
        let (outcome, _, stderr) = run("sftp", &up).await;
        assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
        assert_eq!(std::fs::read_to_string(&target).expect("uploaded"), version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_uploads_and_downloads_a_directory_recursively() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = shared_dir();
    let source = dir.path().join("tree");
    std::fs::create_dir_all(source.join("sub/deeper")).expect("mkdir");
    std::fs::write(source.join("one.txt"), "one\n").expect("write");
    std::fs::write(source.join("sub/two.txt"), "two two\n").expect("write");
    std::fs::write(source.join("sub/deeper/three.bin"), [0u8, 1, 2, 255]).expect("write");
    // sftp globs what it puts and gets: this name must reach the host as it is.
    std::fs::write(source.join("sub/odd [1] *?.txt"), "odd\n").expect("write");
    let target = remote.path().join("new/parents/tree");

    let up = request(
        dir.path(),
        Work::Default,
        sftp_config(&sshd, &source, &target, "upload"),
    );
    let (outcome, stdout, stderr) = run("sftp", &up).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(
        stdout,
        format!(
            "Uploaded {} (20 bytes) to {}\n",
            source.display(),
            target.display()
        )
    );
    assert_eq!(tree(&target), tree(&source));

    // Again, changed: the tree is merged into the one on the host, files replaced.
    std::fs::write(source.join("one.txt"), "one, changed\n").expect("write");
    let (outcome, _, stderr) = run("sftp", &up).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(tree(&target), tree(&source));

    let back_dir = tempfile::tempdir().expect("tempdir");
    let back = back_dir.path().join("again/tree");
    let down = request(
        back_dir.path(),
        Work::Default,
        sftp_config(&sshd, &target, &back, "download"),
    );
    let (outcome, stdout, stderr) = run("sftp", &down).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(
        stdout,
        format!(
            "Downloaded {} (29 bytes) to {}\n",
            target.display(),
            back.display()
        )
    );
    assert_eq!(tree(&back), tree(&source));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_fails_clearly_on_a_missing_source() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = shared_dir();
    let missing = dir.path().join("missing.txt");
    let up = request(
        dir.path(),
        Work::Default,
        sftp_config(&sshd, &missing, &remote.path().join("x"), "upload"),
    );
    let (outcome, stdout, _) = run("sftp", &up).await;
    let Outcome::Failed { reason, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        reason.contains(&missing.display().to_string()) && reason.contains("does not exist"),
        "{reason}"
    );
    assert_eq!(stdout, "");

    let gone = remote.path().join("gone.txt");
    let down = request(
        dir.path(),
        Work::Default,
        sftp_config(&sshd, &gone, &dir.path().join("gone.txt"), "download"),
    );
    let (outcome, _, _) = run("sftp", &down).await;
    let Outcome::Failed { reason, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        reason.contains(&gone.display().to_string()) && reason.contains("not found"),
        "{reason}"
    );
}

/// A path with a newline would end sftp's batch line, and `!cmd` on the next would run a
/// local shell: such a path is refused, and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_refuses_a_path_that_would_split_its_batch() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("injected");
    std::fs::write(dir.path().join("a.txt"), "a").expect("write");
    let destination = format!("/tmp/x\n!touch {}\n-x/a.txt", marker.display());
    let req = request(
        dir.path(),
        Work::Default,
        with(
            &sshd,
            json!({"source": "a.txt", "destination": destination, "direction": "upload"}),
        ),
    );
    let (outcome, _, stderr) = run("sftp", &req).await;
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    assert!(stderr.contains("control character"), "{stderr}");
    assert!(!marker.exists(), "no local command ran");
}

/// A user name that reads as an ssh option (`-oProxyCommand=...`) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_that_reads_as_an_option_is_refused() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("injected");
    let user = format!("-oProxyCommand=touch {}", marker.display());
    let req = request(dir.path(), line("true"), with(&sshd, json!({"user": user})));
    let (outcome, _, stderr) = run("ssh", &req).await;
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    assert!(stderr.contains("is not a user name"), "{stderr}");
    assert!(!marker.exists(), "no local command ran");
}

/// A secret of several lines (a key file) printed by a remote command, line by line, is
/// hidden whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_of_several_lines_is_masked_whole() {
    let Some(sshd) = sshd() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "-----BEGIN KEY-----\nAAAAsecretBBBB\n-----END KEY-----";
    let mut req = request(
        dir.path(),
        line(
            "echo before; echo '-----BEGIN KEY-----'; echo AAAAsecretBBBB; echo '-----END KEY-----'; echo after",
        ),
        with(&sshd, json!({})),
    );
    req.mask = Some(Arc::new(Mask::new([secret.to_string()])));
    let (outcome, stdout, stderr) = run("ssh", &req).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(stdout, "before\n*****\nafter\n");
}
