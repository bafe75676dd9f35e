//! How a step becomes processes on this machine: the shell Dagu would pick (with its
//! `-e`), or the program itself when a command line needs no shell; the working directory
//! (created when missing); the environment; and the files a step's streams are copied to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use trellis_core::{Action, Dag, Step};
use trellis_executor::{ProcessSpec, Tee};
use trellis_store::safe_name;

use crate::expand::Scope;
use crate::{Error, StepEnv};

/// What a step's processes are built from besides the step itself.
pub(crate) struct Launch<'a> {
    /// The step's variables (see [`step_scope`]).
    pub scope: &'a Scope,
    pub stdout: &'a Path,
    pub stderr: &'a Path,
    /// Dagu's `-e` for a shell the step did not choose; conditions run without it.
    pub errexit: bool,
}

/// The processes of one attempt of a step, in order.
pub(crate) fn process_specs<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    launch: &Launch,
) -> Result<Vec<ProcessSpec>, Error> {
    let template = template(env, step, launch)?;
    let dir = template.working_dir.as_deref();
    let with = |(program, args): (String, Vec<String>)| ProcessSpec {
        program,
        args,
        ..template.clone()
    };
    let shell = Shell::of(step, &env.dag, &env.engine.opts.base_env, launch.errexit);
    Ok(match &step.action {
        Action::Commands { commands } => commands
            .iter()
            .map(|c| {
                let command = launch.scope.expand(c, false);
                let own = shell.default.then(|| direct(&command, &template.env, dir));
                with(own.flatten().unwrap_or_else(|| shell.command(command)))
            })
            .collect(),
        Action::Exec { program, args } => vec![with((
            launch.scope.expand(program, true),
            args.iter().map(|a| launch.scope.expand(a, true)).collect(),
        ))],
        Action::Script { script, program } => {
            let p = program.as_deref();
            vec![with(script_process(
                env,
                step,
                launch.scope,
                &shell,
                script,
                p,
            )?)]
        }
        _ => Vec::new(),
    })
}

/// Everything a step's processes share but what they run: the working directory (made
/// when missing, as Dagu does), environment, logs, limits and copies.
fn template<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    launch: &Launch,
) -> Result<ProcessSpec, Error> {
    let dir = working_dir(env, step);
    if let Some(dir) = &dir {
        std::fs::create_dir_all(dir).map_err(|error| Error::WorkingDir {
            dir: dir.display().to_string(),
            error,
        })?;
    }
    let limits = Limits::of(env, step);
    Ok(ProcessSpec {
        program: String::new(),
        args: Vec::new(),
        env: process_env(env, launch, dir.as_deref()),
        tee: tee(step, launch.scope, dir.as_deref()),
        working_dir: dir,
        stdout: launch.stdout.to_path_buf(),
        stderr: launch.stderr.to_path_buf(),
        timeout: limits.timeout,
        stop_signal: limits.stop_signal,
        grace: limits.grace,
        mask: env.mask.clone(),
    })
}

/// The shell a step's command lines and scripts run in.
struct Shell {
    program: String,
    /// What comes before the command (`-c`) or the script file, `-e` included.
    args: Vec<String>,
    /// Neither the step nor the DAG named a shell: then a command may run without one.
    default: bool,
}

impl Shell {
    /// The step's shell, else the DAG's, else the default (Dagu: `$SHELL` of the process
    /// running the DAG, else `sh`). Dagu adds `-e` unless the step named its own shell,
    /// for the shells that know it.
    fn of(step: &Step, dag: &Dag, base_env: &[(String, String)], errexit: bool) -> Shell {
        let named = step.shell.as_ref().or(dag.shell.as_ref());
        let (program, mut args) = match named {
            Some(s) => (s.program.clone(), s.args.clone()),
            None => (default_shell(base_env), Vec::new()),
        };
        if errexit && step.shell.is_none() && knows_errexit(&program) {
            args.push("-e".into());
        }
        Shell {
            program,
            args,
            default: named.is_none(),
        }
    }

    fn command(&self, command: String) -> (String, Vec<String>) {
        let mut args = self.args.clone();
        args.extend(["-c".to_string(), command]);
        (self.program.clone(), args)
    }
}

/// `$SHELL` of this process (its environment is what steps inherit), else `sh`.
fn default_shell(base_env: &[(String, String)]) -> String {
    base_env
        .iter()
        .rev()
        .find(|(k, v)| k == "SHELL" && !v.is_empty())
        .map_or_else(|| "sh".to_string(), |(_, v)| v.clone())
}

/// The Unix shells Dagu gives `-e` (others, such as fish, get only `-c`).
fn knows_errexit(program: &str) -> bool {
    let name = Path::new(program).file_name().and_then(|n| n.to_str());
    matches!(name, Some("sh" | "bash" | "zsh" | "ksh" | "ash" | "dash"))
}

/// A `script:` written to a file of the attempt, and what runs it: the step's `command`,
/// else its shebang (unless the step names a shell, as Dagu), else the shell.
fn script_process<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    scope: &Scope,
    shell: &Shell,
    script: &str,
    program: Option<&str>,
) -> Result<(String, Vec<String>), Error> {
    let path = env
        .attempt
        .dir
        .join(format!("{}.script", safe_name(&step.name)));
    std::fs::write(&path, scope.expand(script, false)).map_err(Error::WriteScript)?;
    let file = path.display().to_string();
    let interpreter = |line: &str| {
        let mut words = line.split_whitespace().map(String::from);
        let program = words.next().unwrap_or_else(|| "sh".into());
        (program, words.chain([file.clone()]).collect())
    };
    let shebang = script.strip_prefix("#!").filter(|_| step.shell.is_none());
    Ok(match (program, shebang) {
        (Some(p), _) => interpreter(p),
        (None, Some(rest)) => interpreter(rest.lines().next().unwrap_or_default()),
        (None, None) => {
            let args = shell.args.iter().cloned().chain([file]).collect();
            (shell.program.clone(), args)
        }
    })
}

/// A command with nothing for a shell to interpret (no quotes, variables, globs,
/// redirections, operators or builtins) runs as argv directly: the same result without the
/// cost of starting a shell for every step. The program may be a name on `PATH` or a path
/// (`/usr/bin/true`, `./tool`, taken from the working directory). Anything else, or a file
/// `execve` would not run as the shell does, goes through the shell, so that errors read
/// exactly as the shell's.
fn direct(
    command: &str,
    env: &[(String, String)],
    dir: Option<&Path>,
) -> Option<(String, Vec<String>)> {
    const SPECIAL: &str = "$`\\\"'|&;<>(){}[]*?~#=!%\n\r";
    const BUILTINS: &[&str] = &[
        "cd", "export", "exit", "set", "unset", "source", ".", "eval", "exec", "alias", "read",
        "shift", "trap", "ulimit", "umask", "wait", "local", "return", "break", "continue",
        "readonly", "type", "hash", "command", "getopts", "times", "if", "then", "else", "fi",
        "for", "while", "until", "do", "done", "case", "esac", "function", "time", "echo",
        "printf",
    ];
    if command.contains(|c: char| SPECIAL.contains(c)) {
        return None;
    }
    let mut words = command.split_whitespace();
    let first = words.next()?;
    if BUILTINS.contains(&first) {
        return None;
    }
    let program = if first.contains('/') {
        // The child enters its working directory before `execve`, so a relative path is
        // looked up from there.
        let at = dir.map_or_else(|| PathBuf::from(first), |d| d.join(first));
        launchable(&at).then(|| first.to_string())?
    } else {
        let found = trellis_executor::find_program(first, env)?;
        launchable(&found).then(|| found.display().to_string())?
    };
    Some((program, words.map(String::from).collect()))
}

/// An executable file that `execve` runs as is: a binary, or a script with `#!`. A script
/// without one is run by a shell as a shell script (`execvp` does the same), so it is
/// left to the shell.
fn launchable(path: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let executable = file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let mut head = [0u8; 4];
    executable
        && file
            .read(&mut head)
            .is_ok_and(|n| head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF")
}

/// The step's working dir: its own (a relative one taken against the DAG's), else the
/// DAG's. Expanded with the run's variables, not the step's `env` (as Dagu), and `~` as
/// the home directory.
pub(crate) fn working_dir<S: ?Sized, E>(env: &StepEnv<S, E>, step: &Step) -> Option<PathBuf> {
    let expand = |d: &str| home(&env.scope.expand(d, true), &env.engine.opts.base_env);
    let dag = env.dag.working_dir.as_deref().map(expand);
    match (step.working_dir.as_deref().map(expand), dag) {
        (Some(own), Some(dag)) => Some(dag.join(own)),
        (own, dag) => own.or(dag),
    }
}

/// `~` and `~/...` in the home directory of the process running the DAG.
fn home(dir: &str, base_env: &[(String, String)]) -> PathBuf {
    let home = || {
        base_env
            .iter()
            .rev()
            .find(|(k, _)| k == "HOME")
            .map(|(_, v)| PathBuf::from(v))
    };
    match dir.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => match home() {
            Some(h) => h.join(rest.trim_start_matches('/')),
            None => PathBuf::from(dir),
        },
        _ => PathBuf::from(dir),
    }
}

/// The step's `stdout:`/`stderr:` files: expanded with the step's variables, a relative
/// one taken against the step's working directory.
fn tee(step: &Step, scope: &Scope, dir: Option<&Path>) -> Tee {
    let path = |p: &Option<String>| {
        p.as_deref().map(|p| {
            let p = PathBuf::from(scope.expand(p, true));
            dir.map_or_else(|| p.clone(), |d| d.join(&p))
        })
    };
    Tee {
        stdout: path(&step.stdout),
        stderr: path(&step.stderr),
    }
}

/// How long a step may run and how it is stopped.
pub(crate) struct Limits {
    pub timeout: Option<Duration>,
    pub stop_signal: Signal,
    /// Between the stop signal and the kill.
    pub grace: Duration,
}

impl Limits {
    pub(crate) fn of<S: ?Sized, E>(env: &StepEnv<S, E>, step: &Step) -> Limits {
        Limits {
            timeout: step.timeout_sec.filter(|t| *t > 0).map(Duration::from_secs),
            stop_signal: step
                .signal_on_stop
                .as_deref()
                .and_then(trellis_executor::parse_signal)
                .unwrap_or(Signal::SIGTERM),
            grace: Duration::from_secs(env.dag.max_clean_up_time_sec),
        }
    }
}

/// The variables of a step: the run's (params, `env:`, secrets, outputs so far) under the
/// step's own `env:` (each entry sees those before it) and its name. A step's `env` thus
/// wins over the DAG's wherever the step's fields are expanded, as in Dagu — except its
/// working directory.
pub(crate) fn step_scope<S: ?Sized, E>(env: &StepEnv<S, E>, step: &Step) -> Scope {
    let mut scope = env.scope.clone();
    for (k, v) in &step.env {
        let value = scope.expand(v, true);
        scope.set_local(k, value);
    }
    scope.set_local("DAG_RUN_STEP_NAME", step.name.clone());
    scope
}

/// The variables a step sets for itself — not this host's environment.
pub(crate) fn step_env<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
) -> indexmap::IndexMap<String, String> {
    step_scope(env, step).all_vars().into_iter().collect()
}

/// A local process's environment: this host's (without `SECRET_VARS`), then the step's
/// own variables, its log files and, as Dagu sets it, `PWD`.
fn process_env<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    launch: &Launch,
    dir: Option<&Path>,
) -> Vec<(String, String)> {
    let mut vars: indexmap::IndexMap<String, String> =
        env.engine.opts.base_env.iter().cloned().collect();
    vars.extend(launch.scope.all_vars());
    let path = |p: &Path| p.display().to_string();
    vars.insert("DAG_RUN_STEP_STDOUT_FILE".into(), path(launch.stdout));
    vars.insert("DAG_RUN_STEP_STDERR_FILE".into(), path(launch.stderr));
    if let Some(dir) = dir.and_then(|d| std::path::absolute(d).ok()) {
        vars.insert("PWD".into(), path(&dir));
    }
    vars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_env() -> Vec<(String, String)> {
        vec![("PATH".into(), "/usr/bin:/bin".into())]
    }

    fn tool(dir: &Path, name: &str, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_program_named_by_path_runs_without_a_shell() {
        let env = path_env();
        let true_path = trellis_executor::find_program("true", &env).expect("true on PATH");
        let t = true_path.display().to_string();
        assert_eq!(direct(&t, &env, None), Some((t.clone(), vec![])));
        assert_eq!(
            direct(&format!("{t} a b"), &env, None),
            Some((t.clone(), vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            direct("true", &env, None),
            Some((t.clone(), vec![])),
            "a name is looked up on PATH"
        );
        let dir = tempfile::tempdir().unwrap();
        tool(dir.path(), "tool", "#!/bin/sh\necho hi\n", 0o755);
        assert_eq!(
            direct("./tool --flag", &env, Some(dir.path())),
            Some(("./tool".into(), vec!["--flag".into()])),
            "a relative path is taken from the working directory"
        );
    }

    #[test]
    fn anything_a_shell_must_interpret_goes_through_it() {
        let env = path_env();
        let dir = tempfile::tempdir().unwrap();
        let d = Some(dir.path());
        tool(dir.path(), "plain", "echo no shebang\n", 0o755);
        tool(dir.path(), "noexec", "#!/bin/sh\n", 0o644);
        for command in [
            "/usr/bin/true | cat",
            "/usr/bin/true > out",
            "/usr/bin/true; /usr/bin/true",
            "/usr/bin/true && /usr/bin/true",
            "$HOME/bin/tool",
            "~/bin/tool",
            "/usr/bin/env A=b",
            "/bin/ls *.txt",
            "/usr/bin/printf '%s' x",
            "echo hi",
            "cd /tmp",
            "./plain",
            "./noexec",
            "./missing",
            "/nonexistent/tool",
        ] {
            assert_eq!(direct(command, &env, d), None, "{command}");
        }
    }

    #[test]
    fn only_unix_shells_get_errexit() {
        for shell in ["sh", "/bin/bash", "/usr/bin/zsh", "dash", "ksh", "ash"] {
            assert!(knows_errexit(shell), "{shell}");
        }
        for shell in ["fish", "/usr/bin/python3", "pwsh", "nu"] {
            assert!(!knows_errexit(shell), "{shell}");
        }
        assert_eq!(default_shell(&[]), "sh");
        let env = [("SHELL".to_string(), "/bin/zsh".to_string())];
        assert_eq!(default_shell(&env), "/bin/zsh");
        let empty = [("SHELL".to_string(), String::new())];
        assert_eq!(default_shell(&empty), "sh");
    }
}
