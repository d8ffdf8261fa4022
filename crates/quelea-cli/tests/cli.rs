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

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn jobs_and_logs_show_what_storage_holds() {
    let dir = tempfile::tempdir().unwrap();
    // A job with a failed call, run by real runners of the `quelea` binary.
    let config = quelea::ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("localdisk.root", dir.path().to_str().unwrap())
        .build()
        .unwrap();
    let exec = quelea::Executor::builder()
        .config(config)
        .runner(
            quelea::RunnerKind::Rust,
            quelea::RunnerCommand {
                program: env!("CARGO_BIN_EXE_quelea").into(),
                args: Vec::new(),
                env: vec![("QUELEA_RUNNER".into(), "rust".into())],
            },
        )
        .build()
        .unwrap();
    let b = quelea_cli::builtins();
    let futures = exec
        .map(
            &b.fail,
            ["pear".to_owned(), "apple".to_owned()],
            quelea::MapOptions::default(),
        )
        .unwrap();
    let _ = exec.get_result(&futures, Some(std::time::Duration::from_secs(60)));
    exec.flush_statuses().unwrap();
    let job = format!("{}-M000", exec.id());

    let listing = run_ok(quelea(dir.path()).arg("jobs"));
    let row = listing.lines().find(|l| l.starts_with(&job)).unwrap();
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&columns[1..6], ["fail", "2", "2", "2", "0"], "{listing}");
    let only = run_ok(quelea(dir.path()).args(["jobs", "--executor", &exec.id().to_string()]));
    assert_eq!(only.lines().count(), 2, "{only}");

    let logs = run_ok(quelea(dir.path()).args(["logs", &job]));
    assert!(logs.contains("2 calls"), "{logs}");
    assert!(
        logs.contains("00001 error")
            && logs.contains("[user_error] BuiltinFailure: refused input `apple`"),
        "{logs}"
    );
    let one = run_ok(quelea(dir.path()).args(["logs", &job, "0"]));
    assert!(
        one.contains("refused input `pear`") && !one.contains("apple"),
        "{one}"
    );

    // Bad input names what is wrong.
    let err = run_err(quelea(dir.path()).args(["logs", &job, "7"]));
    assert!(err.contains("has calls 00000 to 00001, not 00007"), "{err}");
    let err = run_err(quelea(dir.path()).args(["logs", "M000"]));
    assert!(err.contains("is not a job key"), "{err}");
    let err = run_err(quelea(dir.path()).args(["logs", &format!("{}-M042", exec.id())]));
    assert!(err.contains("is not in local directory"), "{err}");
    let err = run_err(quelea(dir.path()).args(["jobs", "--executor", "nope"]));
    assert!(err.contains("`nope` is not an executor id"), "{err}");
}

#[test]
fn storage_put_get_ls_rm() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.txt");
    std::fs::write(&file, "alpha\nbeta\n").unwrap();
    run_ok(quelea(dir.path()).args(["storage", "put", "data/in.txt", file.to_str().unwrap()]));
    let listing = run_ok(quelea(dir.path()).args(["storage", "ls", "data/"]));
    assert!(listing.contains("11  data/in.txt"), "{listing}");
    let body = run_ok(quelea(dir.path()).args(["storage", "get", "data/in.txt"]));
    assert_eq!(body, "alpha\nbeta\n");
    let copy = dir.path().join("out.txt");
    run_ok(quelea(dir.path()).args(["storage", "get", "data/in.txt", copy.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "alpha\nbeta\n");
    // Another bucket of the same storage.
    run_ok(quelea(dir.path()).args([
        "storage",
        "--bucket",
        "other",
        "put",
        "x",
        file.to_str().unwrap(),
    ]));
    assert!(dir.path().join("other").join("x").exists());

    run_ok(quelea(dir.path()).args(["storage", "rm", "data/in.txt"]));
    let err = run_err(quelea(dir.path()).args(["storage", "rm", "data/in.txt"]));
    assert!(err.contains("`data/in.txt` not found"), "{err}");
    let err = run_err(quelea(dir.path()).args(["storage", "rm", "--prefix", ""]));
    assert!(err.contains("refusing to delete a whole bucket"), "{err}");
    let err = run_err(quelea(dir.path()).args(["storage", "put", "k", "/no/such/file"]));
    assert!(err.contains("reading `/no/such/file`"), "{err}");
}
