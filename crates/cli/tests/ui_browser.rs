//! The web UI as a person uses it: a real `trellis server` and a real headless Chromium,
//! driven over WebDriver by Debian's `chromedriver`. Pages are checked for their content,
//! a run is started with the Start button and watched until it ends without a reload,
//! and a step's log appears in the log pane.
//!
//! Without chromedriver the tests print why and pass, except under CI (env `CI`), where
//! a missing browser is a failure. With env `TRELLIS_SCREENSHOTS=<dir>` each page is also
//! saved there as a PNG (this is how `docs/screenshots/` is made).

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{Env, Server};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A pipeline whose `wait_file` step waits for a file the test creates, so the run is
/// seen running first and finishing later.
const PIPELINE: &str = r#"description: Loads the day's orders into the warehouse
labels: [nightly, team=data]
params: WHO=world
schedule: "0 3 * * *"
steps:
  - name: prepare
    command: echo preparing
  - name: wait_file
    script: |
      while [ ! -f "GO_FILE" ]; do sleep 0.05; done
      echo got the go file
    depends: [prepare]
  - name: orders
    command: echo orders loaded
    depends: [wait_file]
  - name: customers
    script: |
      [ "${WHO}" != nobody ] || { echo "no customers for ${WHO}" >&2; exit 1; }
      echo customers loaded
    depends: [wait_file]
  - name: report
    command: echo "hello ${WHO} from the report"
    depends: [orders, customers]
"#;

const BACKUP: &str = "description: Copies the warehouse to cold storage\nsteps:\n  - name: copy\n    command: echo copied\n";

const OTHER: &str = "description: Fails on purpose, and shows <b>markup</b> as typed\nsteps:\n  - name: hi\n    command: echo hi\n  - name: boom\n    command: sh -c 'echo broken >&2; exit 3'\n";

/// A chromedriver on a free port with its own browser profile; killed on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMEDRIVER") {
        return Some(PathBuf::from(p));
    }
    let candidates = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Starts chromedriver, or says why not: `None` means skip (outside CI).
fn driver() -> Option<Driver> {
    let Some(path) = chromedriver_path() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver is missing: install Debian's `chromium chromium-driver`"
        );
        eprintln!(
            "SKIPPED: chromedriver not found (install `chromium chromium-driver` to run the \
             browser tests)"
        );
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(&path)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
    let profile = tempfile::tempdir().expect("browser profile dir");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        profile: profile.path().to_path_buf(),
        _profile: profile,
    };
    let http = support::client();
    support::wait_for(30, "chromedriver to listen", || {
        http.get(format!("{}/status", driver.url)).send().ok()
    });
    Some(driver)
}

async fn browser(driver: &Driver) -> Res<Client> {
    let mut chrome = json!({
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1366,900", "--hide-scrollbars",
            format!("--user-data-dir={}", driver.profile.display()),
        ]
    });
    if Path::new("/usr/bin/chromium").is_file() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), chrome);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    Ok(ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await?)
}

/// Runs `js` (a function body) until it returns `true`.
async fn wait_js(c: &Client, secs: u64, what: &str, js: &str) -> Res {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if c.execute(js, vec![]).await? == Value::Bool(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let state = c.execute("return document.body.innerText", vec![]).await?;
            return Err(format!("timed out waiting for {what}; the page says:\n{state}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text(c: &Client, css: &str) -> Res<String> {
    Ok(c.find(Locator::Css(css)).await?.text().await?)
}

async fn count(c: &Client, css: &str) -> Res<usize> {
    Ok(c.find_all(Locator::Css(css)).await?.len())
}

/// Saves a screenshot as `<TRELLIS_SCREENSHOTS>/<name>.png` when that is set.
async fn shot(c: &Client, name: &str) -> Res {
    let Some(dir) = std::env::var_os("TRELLIS_SCREENSHOTS") else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir)?;
    // The whole page (up to a limit), not just what fits the window.
    let sizes = c
        .execute(
            "return [window.outerHeight - window.innerHeight, \
             document.documentElement.scrollHeight]",
            vec![],
        )
        .await?;
    let px = |i: usize| sizes[i].as_u64().unwrap_or(0) as u32;
    c.set_window_size(1366, (px(0) + px(1)).clamp(900, 2200))
        .await?;
    // Let animations settle into a representative frame.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = c.screenshot().await;
    c.set_window_size(1366, 900).await?;
    std::fs::write(Path::new(&dir).join(format!("{name}.png")), png?)?;
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `test` in a fresh browser session, closing it whatever happens.
fn with_browser(driver: &Driver, test: impl AsyncFnOnce(&Client) -> Res) {
    runtime().block_on(async {
        let c = browser(driver).await.expect("a browser session");
        let result = test(&c).await;
        let _ = c.close().await;
        if let Err(e) = result {
            panic!("{e}");
        }
    });
}

#[test]
fn pages_runs_and_logs_in_a_real_browser() {
    let Some(driver) = driver() else { return };
    let env = Env::new();
    let go = env.path("go-file");
    env.dag(
        "pipeline",
        &PIPELINE.replace("GO_FILE", &go.display().to_string()),
    );
    env.dag("other", OTHER);
    env.dag("backup", BACKUP);
    // One finished run for the lists and the grid, and one waiting in a queue.
    let out = env
        .trellis()
        .args(["start", "-q"])
        .arg(env.dags().join("other.yaml"))
        .output();
    assert!(
        out.is_ok_and(|o| !o.status.success()),
        "`other` fails on purpose"
    );
    let out = env
        .trellis()
        .args(["enqueue", "-r", "queued-run-1"])
        .arg(env.dags().join("backup.yaml"))
        .output()
        .expect("enqueue");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(&env, &[]);
    let url = server.url.clone();
    with_browser(&driver, async |c| {
        dag_list(c, &url).await?;
        let run_path = start_and_watch(c, &url, &go).await?;
        step_log(c).await?;
        shot(c, "run").await?;
        // Two more runs from the command line, the last one failing, for the history.
        for who in ["WHO=cli", "WHO=nobody"] {
            let pipeline = env.dags().join("pipeline.yaml");
            env.trellis()
                .args(["start", "-q", "-p", who])
                .arg(pipeline)
                .output()?;
        }
        dag_page(c, &url).await?;
        lists(c, &url, &run_path).await?;
        c.goto(&format!("{url}/")).await?;
        let pill = c.find(Locator::Css("tr[data-dag=pipeline] .pill")).await?;
        assert_eq!(pill.attr("data-status").await?, Some("failed".into()));
        shot(c, "dags").await?;
        c.goto(&format!("{url}/dags/pipeline?theme=dark")).await?;
        shot(c, "dark").await?;
        c.goto(&format!("{url}/?theme=light")).await?;
        Ok(())
    });
}

async fn dag_list(c: &Client, url: &str) -> Res {
    c.goto(&format!("{url}/")).await?;
    let table = text(c, "#dag-table").await?;
    assert!(
        table.contains("pipeline") && table.contains("other"),
        "{table}"
    );
    assert!(table.contains("Loads the day's orders"), "{table}");
    assert!(
        table.contains("shows <b>markup</b> as typed"),
        "user text is escaped: {table}"
    );
    assert_eq!(
        c.find(Locator::Css("tr[data-dag=other] .pill"))
            .await?
            .attr("data-status")
            .await?,
        Some("failed".into())
    );
    // The search box filters as you type.
    c.find(Locator::Css("#dag-search"))
        .await?
        .send_keys("pipe")
        .await?;
    wait_js(
        c,
        10,
        "the search to hide `other`",
        "return document.querySelector('tr[data-dag=other]').hidden \
         && !document.querySelector('tr[data-dag=pipeline]').hidden",
    )
    .await
}

/// Starts `pipeline` with the Start button, sees it running, lets it finish, and checks
/// the run page followed along without reloading.
/// Returns the run page's path.
async fn start_and_watch(c: &Client, url: &str, go: &Path) -> Res<String> {
    c.goto(&format!("{url}/dags/pipeline")).await?;
    assert_eq!(count(c, "svg.dag g.node").await?, 5, "one node per step");
    assert_eq!(
        count(c, "svg.dag path.edge").await?,
        5,
        "one edge per dependency"
    );
    let params = c.find(Locator::Css("#start-params")).await?;
    assert_eq!(params.prop("value").await?, Some("WHO=world".into()));
    params.clear().await?;
    params.send_keys("WHO=browser").await?;
    c.find(Locator::Css("#start-btn")).await?.click().await?;
    wait_js(
        c,
        30,
        "the run page",
        "return location.pathname.includes('/dags/pipeline/runs/')",
    )
    .await?;
    let run_path = c.current_url().await?.path().to_string();
    wait_js(
        c,
        30,
        "wait_file to run",
        "const row = [...document.querySelectorAll('#steps tbody tr')]\
           .find(r => r.dataset.step === 'wait_file');\
         return row.querySelector('.pill').dataset.status === 'running' \
           && document.querySelector('#run-status').dataset.status === 'running'",
    )
    .await?;
    c.execute("window.stillThisPage = true", vec![]).await?;
    std::fs::write(go, "go")?;
    wait_js(
        c,
        60,
        "the run to succeed",
        "return document.querySelector('#run-status').textContent.trim() === 'succeeded'",
    )
    .await?;
    let same = c
        .execute("return window.stillThisPage === true", vec![])
        .await?;
    assert_eq!(
        same,
        Value::Bool(true),
        "the page updated live, without a reload"
    );
    let steps = text(c, "#steps").await?;
    assert_eq!(steps.matches("succeeded").count(), 5, "{steps}");
    assert_eq!(
        count(c, "svg.dag g.node.st-succeeded").await?,
        5,
        "graph nodes follow the run"
    );
    Ok(run_path)
}

async fn step_log(c: &Client) -> Res {
    c.find(Locator::Css("button.log-btn[data-step=report]"))
        .await?
        .click()
        .await?;
    wait_js(
        c,
        30,
        "the report step's log",
        "return document.querySelector('#log').textContent.includes('hello browser from the report')",
    )
    .await?;
    assert_eq!(text(c, "#log-step").await?, "report");
    Ok(())
}

async fn dag_page(c: &Client, url: &str) -> Res {
    c.goto(&format!("{url}/dags/pipeline")).await?;
    let spec = text(c, "#spec").await?;
    assert!(spec.contains("while [ ! -f \""), "{spec}");
    assert_eq!(
        count(c, "#history-grid tbody tr").await?,
        5,
        "a row per step"
    );
    assert_eq!(
        count(c, "#history-grid tbody a.cell").await?,
        15,
        "5 steps × 3 runs"
    );
    assert_eq!(count(c, "#history-grid tbody a.cell.st-failed").await?, 1);
    // The graph shows the latest run: the one that failed at `customers`.
    let failed = c.find(Locator::Css("svg.dag g.node.st-failed")).await?;
    assert_eq!(failed.attr("data-step").await?, Some("customers".into()));
    assert_eq!(count(c, "svg.dag g.node.st-succeeded").await?, 3);
    shot(c, "dag").await
}

async fn lists(c: &Client, url: &str, run_path: &str) -> Res {
    let run_id = run_path.rsplit('/').next().unwrap_or_default().to_string();
    c.goto(&format!("{url}/runs")).await?;
    let runs = text(c, "#runs-table").await?;
    assert!(runs.contains(&run_id) && runs.contains("other"), "{runs}");
    assert!(runs.contains("WHO=browser"), "{runs}");
    shot(c, "runs").await?;

    c.goto(&format!("{url}/queue")).await?;
    let queue = text(c, "main").await?;
    assert!(queue.contains("queued-run-1"), "{queue}");
    assert_eq!(count(c, ".dequeue-btn").await?, 1);
    shot(c, "queue").await?;

    c.goto(&format!("{url}/workers")).await?;
    let workers = text(c, "main").await?;
    assert!(
        workers.contains("No workers registered — runs execute on this machine"),
        "{workers}"
    );
    shot(c, "workers").await
}

#[test]
fn signing_in_with_roles_under_a_path_prefix() {
    let Some(driver) = driver() else { return };
    let env = Env::new();
    env.dag("pipeline", PIPELINE);
    let config = env.config(
        "auth:\n  basic: {username: admin, password: admin-pw}\n  users:\n    \
         - {username: vera, password: view-pw, role: viewer}\n",
    );
    let config = config.display().to_string();
    // Behind a reverse proxy's path prefix, which every link and fetch must carry.
    let server = Server::start(&env, &["--config", &config, "--path-prefix", "/trellis"]);
    let url = server.url.clone();
    assert!(url.ends_with("/trellis"), "{url}");
    with_browser(&driver, async |c| {
        c.goto(&format!("{url}/dags/pipeline")).await?;
        wait_js(
            c,
            10,
            "the login form",
            "return location.pathname === '/trellis/login' \
             && new URLSearchParams(location.search).get('next') === '/trellis/dags/pipeline' \
             && document.styleSheets[0].cssRules.length > 0",
        )
        .await?;
        shot(c, "login").await?;
        sign_in(c, "vera", "wrong").await?;
        assert!(
            text(c, "#login-error")
                .await?
                .contains("Wrong user name or password")
        );
        sign_in(c, "vera", "view-pw").await?;
        wait_js(
            c,
            10,
            "the DAG page",
            "return location.pathname === '/trellis/dags/pipeline'",
        )
        .await?;
        assert!(text(c, ".navright").await?.contains("vera"));
        assert_eq!(
            count(c, "#start-btn").await?,
            0,
            "a viewer gets no Start button"
        );
        assert_eq!(count(c, "svg.dag g.node").await?, 5);
        let cookies = c.execute("return document.cookie", vec![]).await?;
        assert!(
            !cookies.to_string().contains("trellis_session"),
            "the session cookie is HttpOnly"
        );
        c.find(Locator::Css(".navright form button"))
            .await?
            .click()
            .await?;
        wait_js(
            c,
            10,
            "signing out",
            "return location.pathname.endsWith('/login')",
        )
        .await?;
        c.goto(&format!("{url}/runs")).await?;
        wait_js(
            c,
            10,
            "the login form again",
            "return location.pathname.endsWith('/login')",
        )
        .await
    });
}

async fn sign_in(c: &Client, user: &str, password: &str) -> Res {
    let name = c.find(Locator::Css("#username")).await?;
    name.clear().await?;
    name.send_keys(user).await?;
    c.find(Locator::Css("#password"))
        .await?
        .send_keys(password)
        .await?;
    // The old page reads `complete` until the new one replaces it: mark it, and wait
    // for a page without the mark.
    c.execute("window.__before_submit = true", vec![]).await?;
    c.find(Locator::Css(".login button[type=submit]"))
        .await?
        .click()
        .await?;
    wait_js(
        c,
        10,
        "the form to submit",
        "return !window.__before_submit && document.readyState === 'complete'",
    )
    .await
}
