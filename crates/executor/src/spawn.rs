//! Starting a step's process as cheaply as the kernel allows, tied to its runner.
//!
//! A step must not outlive the process that runs it: if a worker or `trellis start` is
//! killed, the kernel kills its steps (`PR_SET_PDEATHSIG`), so a re-queued attempt never
//! runs beside an orphan of the lost one. std's `Command` can only do that in a
//! `pre_exec` hook, and any hook makes it `fork` instead of `posix_spawn`: the page
//! tables of the whole runner are copied for every step, so each step costs more the
//! larger the run (0.79 → 1.83 ms per step at 10 000 steps). This module does what
//! `posix_spawn` does — `clone(CLONE_VM | CLONE_VFORK)`, so nothing is copied — and sets
//! the death signal in the child before `execve`.
//!
//! The death signal fires when the *thread* that created the child exits, not the
//! process: every child is created by one thread that lives as long as the process
//! ([`spawner`]), never by a runtime thread that may retire. The child is awaited through
//! a pidfd (Linux 5.3+), or SIGCHLD on older kernels.

use std::ffi::{CString, c_char, c_int, c_void};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{OnceLock, mpsc};

use nix::libc;
use tokio::io::unix::AsyncFd;

/// What the child needs, built before it exists: it may not allocate.
pub(crate) struct Prepared {
    /// Paths to try in order (a bare name, once per `PATH` entry, as `execvp` does).
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    pub stdout: File,
    pub stderr: File,
}

impl Prepared {
    /// `program` with `args` and exactly `env`; a name without `/` is looked up in the
    /// `PATH` of `env` (relative entries from the working directory), as std does.
    pub fn new(
        program: &std::path::Path,
        args: &[String],
        env: &[(String, String)],
        cwd: Option<&std::path::Path>,
        (stdout, stderr): (File, File),
    ) -> io::Result<Prepared> {
        use std::os::unix::ffi::OsStrExt;
        let c = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("a NUL byte in a command"));
        let name = program.as_os_str().as_bytes();
        let candidates = if name.contains(&b'/') {
            vec![c(name)?]
        } else {
            let path = env.iter().rev().find(|(k, _)| k == "PATH");
            let dirs = path.map_or("/bin:/usr/bin", |(_, v)| v.as_str());
            let join =
                |d: &str| [if d.is_empty() { "." } else { d }.as_bytes(), b"/", name].concat();
            dirs.split(':')
                .map(|d| c(&join(d)))
                .collect::<io::Result<_>>()?
        };
        let mut argv = vec![c(name)?];
        for arg in args {
            argv.push(c(arg.as_bytes())?);
        }
        let envp = env
            .iter()
            .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<_>>()?;
        let cwd = cwd.map(|d| c(d.as_os_str().as_bytes())).transpose()?;
        Ok(Prepared {
            candidates,
            argv,
            envp,
            cwd,
            stdout,
            stderr,
        })
    }
}

/// A started process, the leader of its own process group. Dropped before it was awaited
/// to the end, its group is killed (as `kill_on_drop`).
#[derive(Debug)]
pub(crate) struct Child {
    pid: i32,
    exit: Exit,
    status: Option<ExitStatus>,
}

#[derive(Debug)]
enum Exit {
    Pidfd(AsyncFd<OwnedFd>),
    /// Kernels before 5.3: woken by SIGCHLD.
    Sigchld(tokio::signal::unix::Signal),
}

impl Child {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits until the process ends (cancel-safe: call it again after a timeout).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            match &mut self.exit {
                Exit::Pidfd(fd) => fd.readable().await?.clear_ready(),
                Exit::Sigchld(signal) => {
                    signal.recv().await;
                }
            }
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let mut raw = 0;
        // SAFETY: waits for our own child; `raw` outlives the call.
        match unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) } {
            0 => Ok(None),
            pid if pid == self.pid => {
                self.status = Some(ExitStatus::from_raw(raw));
                Ok(self.status)
            }
            _ => Err(io::Error::last_os_error()),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let pid = self.pid;
        // Collected off the runtime: it dies at once, but not within this call.
        std::thread::spawn(move || {
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        });
    }
}

/// Starts the process from the spawner thread.
pub(crate) async fn spawn(prepared: Prepared) -> io::Result<Child> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    spawner()
        .send(Request { prepared, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    let (pid, pidfd) = answer
        .await
        .map_err(|_| io::Error::other("the spawner thread is gone"))??;
    let exit = match pidfd {
        // SAFETY: an OwnedFd's descriptor stays open and the same until it is dropped.
        Some(fd) => Exit::Pidfd(
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?,
        ),
        None => Exit::Sigchld(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::child(),
        )?),
    };
    Ok(Child {
        pid,
        exit,
        status: None,
    })
}

type Spawned = io::Result<(i32, Option<OwnedFd>)>;

/// The child could not enter its working directory: the error names the directory, since
/// the program was never reached.
#[derive(Debug)]
pub(crate) struct BadWorkingDir {
    dir: String,
    error: io::Error,
}

impl std::fmt::Display for BadWorkingDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "working directory {}: {}", self.dir, self.error)
    }
}

impl std::error::Error for BadWorkingDir {}

struct Request {
    prepared: Prepared,
    reply: tokio::sync::oneshot::Sender<Spawned>,
}

/// The one thread that creates every child, for the life of the process.
fn spawner() -> &'static mpsc::Sender<Request> {
    static SENDER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let started = std::thread::Builder::new()
            .name("trellis-spawner".into())
            .spawn(move || serve(rx));
        if let Err(e) = started {
            tracing::error!("cannot start the spawner thread: {e}");
        }
        tx
    })
}

fn serve(requests: mpsc::Receiver<Request>) {
    // No signal handler ever runs on this thread, so none can run in a child that still
    // shares its memory; the child resets handlers before it unblocks signals.
    let mut all = nix::sys::signal::SigSet::all();
    all.remove(nix::sys::signal::Signal::SIGSEGV);
    let _ = all.thread_block();
    let mut stack = vec![0u8; 256 * 1024];
    let null = File::open("/dev/null");
    for Request { prepared, reply } in requests {
        let started = match &null {
            Ok(null) => start(&prepared, null, &mut stack),
            Err(e) => Err(io::Error::new(e.kind(), format!("/dev/null: {e}"))),
        };
        let _ = reply.send(started);
    }
}

/// What the child reads (through a pointer: it shares this thread's memory).
struct ChildArgs {
    candidates: Vec<*const c_char>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    cwd: *const c_char,
    fds: [c_int; 3],
    parent: libc::pid_t,
    /// Set by the child when it fails before or at `execve`.
    errno: AtomicI32,
    /// Set by the child when what failed was entering its working directory.
    in_cwd: std::sync::atomic::AtomicBool,
}

fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    let mut out: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    out.push(std::ptr::null());
    out
}

fn start(p: &Prepared, null: &File, stack: &mut [u8]) -> Spawned {
    let args = ChildArgs {
        candidates: p.candidates.iter().map(|s| s.as_ptr()).collect(),
        argv: pointers(&p.argv),
        envp: pointers(&p.envp),
        cwd: p.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        fds: [null.as_raw_fd(), p.stdout.as_raw_fd(), p.stderr.as_raw_fd()],
        parent: std::process::id() as libc::pid_t,
        errno: AtomicI32::new(0),
        in_cwd: std::sync::atomic::AtomicBool::new(false),
    };
    // The stack grows down on every Linux target Trellis builds for; 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: the child runs `child_main` on its own stack, reading `args`, which lives
    // until `clone` returns: with CLONE_VFORK this thread waits until the child has
    // called `execve` or exited. `child_main` only makes system calls.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut c_void,
            flags,
            &args as *const ChildArgs as *mut c_void,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let errno = args.errno.load(Ordering::SeqCst);
    if errno != 0 {
        // SAFETY: collects the child that failed to exec.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(child_error(errno, args.in_cwd.load(Ordering::SeqCst), p));
    }
    // SAFETY: a plain system call; the child is ours and not yet collected, so its pid
    // cannot be reused before this.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a new descriptor that nothing else owns.
    let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as c_int) });
    Ok((pid, pidfd))
}

/// Why the child never ran its program; when the working directory was the cause, an
/// error that names it.
fn child_error(errno: c_int, in_cwd: bool, p: &Prepared) -> io::Error {
    let error = io::Error::from_raw_os_error(errno);
    match p.cwd.as_deref().filter(|_| in_cwd) {
        Some(dir) => {
            let dir = dir.to_string_lossy().into_owned();
            io::Error::new(error.kind(), BadWorkingDir { dir, error })
        }
        None => error,
    }
}

/// The child, between `clone` and `execve`: system calls only (it shares the parent's
/// memory, so it must not allocate, lock or unwind).
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` of `start`, alive while the parent waits.
    let a = unsafe { &*(arg as *const ChildArgs) };
    // SAFETY: each call is a system call on values prepared by the parent.
    unsafe {
        reset_signal_handlers();
        if libc::setpgid(0, 0) != 0 {
            return fail(a);
        }
        for (target, &fd) in a.fds.iter().enumerate() {
            let target = target as c_int;
            let done = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) // keep it open across exec
            } else {
                libc::dup2(fd, target)
            };
            if done < 0 {
                return fail(a);
            }
        }
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            a.in_cwd.store(true, Ordering::SeqCst);
            return fail(a);
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return fail(a);
        }
        // The runner may have died before the prctl: then nobody would kill us.
        if libc::getppid() != a.parent {
            a.errno.store(libc::ESRCH, Ordering::SeqCst);
            libc::_exit(127);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        exec_first(a)
    }
}

/// Tries each candidate path as `execvp` does: past ENOENT, ENOTDIR and EACCES (reported
/// if no candidate runs), stopping at any other error.
unsafe fn exec_first(a: &ChildArgs) -> c_int {
    let mut denied = false;
    for &path in &a.candidates {
        // SAFETY: null-terminated arrays of C strings prepared by the parent.
        unsafe { libc::execve(path, a.argv.as_ptr(), a.envp.as_ptr()) };
        match errno() {
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR => {}
            _ => return fail(a),
        }
    }
    let err = if denied { libc::EACCES } else { libc::ENOENT };
    a.errno.store(err, Ordering::SeqCst);
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

fn errno() -> c_int {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn fail(a: &ChildArgs) -> c_int {
    a.errno.store(errno(), Ordering::SeqCst);
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

/// Handlers installed by the runner become the default action, and SIGPIPE, which Rust
/// ignores, too (as std does for its children); other ignored signals stay ignored.
unsafe fn reset_signal_handlers() {
    // SAFETY: sigaction on this child's own copy of the handler table.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..65 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(sig, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            let handled =
                current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN;
            if handled || sig == libc::SIGPIPE {
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use crate::{Executor, Local, Outcome, ProcessSpec};

    fn spec(dir: &std::path::Path, program: &str, args: &[&str], path: &str) -> ProcessSpec {
        ProcessSpec {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("PATH".into(), path.into())],
            working_dir: Some(dir.to_path_buf()),
            stdout: dir.join("out"),
            stderr: dir.join("err"),
            timeout: None,
            stop_signal: nix::sys::signal::Signal::SIGTERM,
            grace: Duration::from_millis(200),
            mask: None,
            tee: crate::Tee::default(),
        }
    }

    fn read(dir: &std::path::Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap_or_default()
    }

    #[tokio::test]
    async fn bare_names_are_found_as_execvp_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/tool"), "#!/bin/sh\necho tool ran\n").unwrap();
        std::fs::write(d.join("bin/noexec"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |m| std::fs::Permissions::from_mode(m);
        std::fs::set_permissions(d.join("bin/tool"), mode(0o755)).unwrap();
        std::fs::set_permissions(d.join("bin/noexec"), mode(0o644)).unwrap();
        // A relative PATH entry is relative to the step's working directory.
        let run = |program: &'static str| {
            Local.run(
                spec(d, program, &[], "/nonexistent:bin:/usr/bin:/bin"),
                CancellationToken::new(),
            )
        };
        assert_eq!(run("tool").await, Outcome::Exited(0));
        assert_eq!(read(d, "out"), "tool ran\n");
        match run("noexec").await {
            Outcome::SpawnFailed(m) => assert!(m.contains("Permission denied"), "{m}"),
            other => panic!("{other:?}"),
        }
        match run("no-such-tool").await {
            Outcome::SpawnFailed(m) => assert!(m.contains("No such file"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut bad_dir = spec(d, "/bin/true", &[], "/bin");
        bad_dir.working_dir = Some(d.join("missing"));
        match Local.run(bad_dir, CancellationToken::new()).await {
            // The directory is what is wrong, not the program.
            Outcome::SpawnFailed(m) => assert_eq!(
                m,
                format!(
                    "working directory {}: No such file or directory (os error 2)",
                    d.join("missing").display()
                )
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_child_starts_with_default_signals_and_nothing_blocked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Rust ignores SIGPIPE; a child that inherited that would see `yes` complain.
        let script = "yes | head -n 1; grep -E '^Sig(Blk|Ign)' /proc/self/status";
        let got = Local
            .run(
                spec(d, "sh", &["-c", script], "/usr/bin:/bin"),
                CancellationToken::new(),
            )
            .await;
        assert_eq!(got, Outcome::Exited(0));
        assert_eq!(read(d, "err"), "");
        let out = read(d, "out");
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        // What this process ignores stays ignored (an operator's `nohup`), but SIGPIPE.
        let ours = std::fs::read_to_string("/proc/self/status").unwrap();
        let ignored = |status: &str| {
            let hex = status
                .split("SigIgn:")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next();
            u64::from_str_radix(hex.unwrap(), 16).unwrap()
        };
        let pipe = 1 << (nix::libc::SIGPIPE - 1);
        assert_ne!(ignored(&ours) & pipe, 0, "Rust ignores SIGPIPE");
        assert_eq!(ignored(&out), ignored(&ours) & !pipe, "{out}");
    }

    /// The death signal follows the thread that created the child: a step asked for from
    /// a thread that then exits must live on.
    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let (fifo_dir, asker_dir) = (d.clone(), d.clone());
        let made = std::process::Command::new("mkfifo")
            .arg(d.join("go"))
            .status();
        assert!(made.unwrap().success());
        let asker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let s = spec(&asker_dir, "sh", &["-c", "read x < go; echo alive"], "/bin");
                let files = (
                    super::super::append(&s.stdout).unwrap(),
                    super::super::append(&s.stderr).unwrap(),
                );
                let p = super::Prepared::new(
                    "sh".as_ref(),
                    &s.args,
                    &s.env,
                    s.working_dir.as_deref(),
                    files,
                );
                let child = super::spawn(p.unwrap()).await.unwrap();
                let pid = child.id();
                std::mem::forget(child); // not killed on drop: this thread only asked
                pid
            })
        });
        let pid = asker.join().unwrap();
        // The asking thread is gone; the child waits on the fifo until told to go on.
        std::fs::write(fifo_dir.join("go"), "go\n").unwrap();
        let mut status = 0;
        // SAFETY: collects our own child.
        unsafe { nix::libc::waitpid(pid as i32, &mut status, 0) };
        assert!(nix::libc::WIFEXITED(status), "killed: status {status:#x}");
        assert_eq!(read(&d, "out"), "alive\n");
    }
}
