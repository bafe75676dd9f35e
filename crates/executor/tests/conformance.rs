//! The executor conformance suite (`trellis_executor::conformance`) against every
//! executor: the fake one, and Docker through a throwaway Podman service.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use trellis_executor::conformance::{self, Programs, Suite};
use trellis_executor::fake::{Fake, World};
use trellis_executor::{Docker, StepExecutor, Work};
use trellis_testdb::podman::Podman;

struct FakePrograms {
    world: World,
    dir: PathBuf,
}

impl Programs for FakePrograms {
    fn print(&self, out: &str, err: &str, code: i32) -> Work {
        Work::Argv(vec![
            "print".into(),
            out.into(),
            err.into(),
            code.to_string(),
        ])
    }
    fn await_flag(&self, flag: &str, before: &str, after: &str) -> Work {
        let path = self.dir.join(flag).display().to_string();
        Work::Argv(vec!["await".into(), path, before.into(), after.into()])
    }
    fn sleep(&self) -> Work {
        Work::Argv(vec!["sleep".into()])
    }
    fn config(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn flag_dir(&self) -> PathBuf {
        self.dir.clone()
    }
    fn leftovers(&self) -> Vec<String> {
        self.world.leftovers()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_executor_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = World::default();
    let programs = FakePrograms {
        world: world.clone(),
        dir: dir.path().to_path_buf(),
    };
    let make = move || Arc::new(Fake::new(world.clone())) as Arc<dyn StepExecutor>;
    let suite = Suite {
        make: &make,
        programs: &programs,
        logs: dir.path(),
        prefix: "fake",
    };
    conformance::run(&suite).await.expect("conformance");
}

struct DockerPrograms<'a> {
    podman: &'a Podman,
    dir: PathBuf,
}

/// `sh -c SCRIPT sh ARGS...`: the arguments reach the script as `$1`... unquoted by us.
fn sh(script: &str, args: &[&str]) -> Work {
    let mut argv = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
    argv.extend(args.iter().map(|a| a.to_string()));
    Work::Argv(argv)
}

impl Programs for DockerPrograms<'_> {
    fn print(&self, out: &str, err: &str, code: i32) -> Work {
        sh(
            r#"printf %s "$1"; printf %s "$2" >&2; exit "$3""#,
            &[out, err, &code.to_string()],
        )
    }
    fn await_flag(&self, flag: &str, before: &str, after: &str) -> Work {
        sh(
            r#"printf %s "$2"; while [ ! -f "/flags/$1" ]; do sleep 0.05; done; printf %s "$3""#,
            &[flag, before, after],
        )
    }
    fn sleep(&self) -> Work {
        sh("sleep 600", &[])
    }
    fn config(&self) -> serde_json::Value {
        json!({
            "image": Podman::IMAGE,
            "pull": "never",
            "host": self.podman.docker_host(),
            "volumes": [format!("{}:/flags", self.dir.display())],
        })
    }
    fn flag_dir(&self) -> PathBuf {
        self.dir.clone()
    }
    fn leftovers(&self) -> Vec<String> {
        self.podman.containers()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_executor_passes_the_suite_on_podman() {
    if !Podman::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "podman and busybox-static must be installed in CI"
        );
        eprintln!("skipped: podman (root) and busybox-static are needed");
        return;
    }
    let podman = Podman::start().expect("start podman");
    let dir = tempfile::tempdir().expect("tempdir");
    let programs = DockerPrograms {
        podman: &podman,
        dir: dir.path().to_path_buf(),
    };
    let make = || Arc::new(Docker::from_env()) as Arc<dyn StepExecutor>;
    let suite = Suite {
        make: &make,
        programs: &programs,
        logs: dir.path(),
        prefix: "docker",
    };
    conformance::run(&suite).await.expect("conformance");
}
