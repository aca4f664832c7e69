//! The `rendertrust-bootstrap` binary: first stdout line, persistent identity, clean stop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn start(data_dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rendertrust-bootstrap"))
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--listen",
            "/ip4/0.0.0.0/udp/0/quic-v1",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(20),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("no address printed within 20 s")
    .unwrap()
    .expect("exited before printing its address");
    (child, line)
}

async fn stop(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("did not stop within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn prints_its_address_keeps_its_identity_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, first) = start(dir.path()).await;
    // 0.0.0.0 is printed as loopback, the port is the bound one, the peer id is appended.
    assert!(first.starts_with("/ip4/127.0.0.1/udp/"), "{first}");
    assert!(!first.contains("/udp/0/"), "{first}");
    let (_, peer) = first
        .split_once("/quic-v1/p2p/")
        .expect("full multiaddr with /p2p/");
    assert!(peer.starts_with("12D3KooW"), "{first}");
    assert_eq!(
        std::fs::read(dir.path().join("identity.key"))
            .unwrap()
            .len(),
        32
    );
    stop(child).await;

    let (child, second) = start(dir.path()).await;
    assert!(
        second.ends_with(&format!("/p2p/{peer}")),
        "same identity after restart: {second}"
    );
    stop(child).await;
}

#[test]
fn help_teaches_the_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rendertrust-bootstrap"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--data-dir",
        "--log-format",
        "--external",
        "/p2p/",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
