//! The throwaway sshd: a key login with strict host key checking, and sftp.

use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use trellis_testdb::sshd::Sshd;

fn start() -> Sshd {
    Sshd::start().expect("sshd starts (scripts/test installs openssh-server)")
}

fn check(out: &Output, sshd: &Sshd) {
    assert!(
        out.status.success(),
        "{:?}\nstderr: {}\nsshd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
}

/// ssh with every option spelled out (no config file): what an SSH step would pass.
fn ssh(sshd: &Sshd, known_hosts: &std::path::Path) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
    ])
    .args([
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
    ])
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
    .arg("-i")
    .arg(sshd.key_path())
    .args(["-p", &sshd.port().to_string()])
    .arg(format!("{}@127.0.0.1", sshd.user()))
    .stdin(Stdio::null());
    cmd
}

#[test]
fn a_command_runs_with_the_key_and_strict_host_key_checking() {
    let sshd = start();
    let out = ssh(&sshd, &sshd.known_hosts())
        .arg("echo hello; id -un")
        .output()
        .unwrap();
    check(&out, &sshd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, format!("hello\n{}\n", sshd.user()));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "a clean login shell"
    );

    // An unknown host key is refused: the checking is real.
    let empty = sshd.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let out = ssh(&sshd, &empty).arg("true").output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sftp_puts_a_file() {
    let sshd = start();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let remote = format!("trellis-testdb-sftp-{}-{nanos}.txt", std::process::id());
    let local = sshd.dir().join("upload.txt");
    std::fs::write(&local, "over sftp\n").unwrap();
    let batch = sshd.dir().join("batch");
    std::fs::write(&batch, format!("put {} {remote}\n", local.display())).unwrap();
    let out = Command::new("sftp")
        .arg("-F")
        .arg(sshd.ssh_config())
        .arg("-b")
        .arg(&batch)
        .arg(Sshd::HOST)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check(&out, &sshd);
    // Relative to the login user's home; read back and removed over ssh.
    let out = sshd
        .ssh()
        .arg(format!("cat {remote} && rm {remote}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check(&out, &sshd);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over sftp\n");
}
