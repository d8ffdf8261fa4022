//! The `quelea` command, run as a user runs it.

use std::process::Command;

fn quelea(storage: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quelea"));
    cmd.env("QUELEA_STORAGE_DIR", storage)
        .env_remove("QUELEA_CONFIG_FILE");
    cmd
}

#[test]
fn hello_runs_a_map_reduce_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = quelea(dir.path())
        .args(["hello", "--calls", "300"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("300 calls of x*x -> [0, 1, 4, 9, 16, ...]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sum of squares = 8955050 (checked)"),
        "{stdout}"
    );
    assert!(stdout.contains("calls/s"), "{stdout}");
    // The job's objects are where it says they are.
    let prefix = stdout
        .lines()
        .find_map(|l| l.strip_prefix("job objects: "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_owned();
    let job_dir = dir.path().join("quelea").join(prefix.trim_end_matches('/'));
    assert!(
        job_dir.join("M000").join("job.json").exists(),
        "{}",
        job_dir.display()
    );

    let out = quelea(dir.path()).arg("clean").output().unwrap();
    assert!(out.status.success());
    assert!(!job_dir.join("M000").join("job.json").exists());
}

#[test]
fn config_show_resolves_layers_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "execution:\n  timeout: 42\ns3:\n  secret_access_key: hunter2\n",
    )
    .unwrap();
    let out = quelea(dir.path())
        .args(["config", "show", "--config"])
        .arg(&file)
        .env("QUELEA_WORKERS", "3")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("timeout: 42"), "{stdout}");
    assert!(stdout.contains("workers: 3"), "{stdout}");
    assert!(
        !stdout.contains("hunter2") && stdout.contains("<redacted>"),
        "{stdout}"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "backend: local\nexecution:\n  timout: 3\n").unwrap();
    let out = quelea(dir.path())
        .args(["config", "show", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("timout") && stderr.contains("config.yaml"),
        "{stderr}"
    );

    let out = quelea(dir.path())
        .args(["hello", "--calls", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--calls must be at least 1"));

    let out = quelea(dir.path()).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("quelea "));
}
