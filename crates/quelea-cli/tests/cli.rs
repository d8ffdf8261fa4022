//! The `quelea` command, run as a user runs it.

use std::process::Command;

fn quelea(storage: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quelea"));
    // HOME too: nothing of the user's (~/.quelea/config.yaml) is read.
    cmd.env("QUELEA_STORAGE_DIR", storage)
        .env("HOME", storage)
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
fn logs_show_every_attempt_of_a_retried_call() {
    let dir = tempfile::tempdir().unwrap();
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
    // Fails twice (user errors), succeeds on its third attempt.
    let futures = exec
        .map(
            &b.flaky,
            [("markers/a/".to_owned(), 2, "error".to_owned())],
            quelea::MapOptions::default()
                .retries(2)
                .retry_user_errors(true),
        )
        .unwrap();
    let results = exec
        .get_result(&futures, Some(std::time::Duration::from_secs(60)))
        .unwrap();
    assert_eq!(results, vec![2]);
    exec.flush_statuses().unwrap();
    let job = format!("{}-M000", exec.id());
    let logs = run_ok(quelea(dir.path()).args(["logs", &job, "0"]));
    let lines: Vec<&str> = logs.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "{logs}");
    assert!(
        lines[0].starts_with("00000 retried")
            && lines[0]
                .contains("attempt 0 [user_error] BuiltinFailure: refused input `attempt 0`"),
        "{logs}"
    );
    assert!(
        lines[1].starts_with("00000 retried") && lines[1].contains("attempt 1 [user_error]"),
        "{logs}"
    );
    assert!(
        lines[2].starts_with("00000 success") && lines[2].ends_with("attempt 2"),
        "{logs}"
    );
    let listing = run_ok(quelea(dir.path()).arg("jobs"));
    let row = listing.lines().find(|l| l.starts_with(&job)).unwrap();
    let columns: Vec<&str> = row.split_whitespace().collect();
    // Done, not failed: its earlier failures were not final.
    assert_eq!(&columns[1..6], ["flaky", "1", "1", "0", "0"], "{listing}");
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

/// Runs `quelea ARGS | head -1` in bash with `pipefail`: the exit status is
/// quelea's. Returns (status, stdout, stderr).
fn piped_into_head(storage: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"set -o pipefail; "$Q_BIN" "$@" | head -1"#)
        .arg("bash")
        .args(args)
        .env("Q_BIN", env!("CARGO_BIN_EXE_quelea"))
        .env("QUELEA_STORAGE_DIR", storage)
        .env("HOME", storage)
        .env("QUELEA_WORKERS", "2")
        .env_remove("QUELEA_CONFIG_FILE");
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_piped_into_head_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // Output far larger than a pipe's buffer (64 KiB), so that quelea is
    // still writing when `head` has gone: a 3000-call job (logs), 3000
    // objects (ls), a 1 MiB object (get).
    let hello = run_ok(
        quelea(dir.path())
            .env("QUELEA_WORKERS", "2")
            .args(["hello", "--calls", "3000"]),
    );
    let job = hello
        .lines()
        .find_map(|l| l.strip_prefix("job objects: quelea/jobs/"))
        .and_then(|l| l.split('/').next())
        .map(|executor| format!("{executor}-M000"))
        .unwrap();
    let many = dir.path().join("quelea").join("many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..3000 {
        std::fs::write(many.join(format!("object-{i:05}")), b"x").unwrap();
    }
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "a line of a big object\n".repeat(50_000)).unwrap();
    run_ok(
        quelea(dir.path())
            .args(["storage", "put", "big.txt"])
            .arg(&big),
    );

    let commands: &[&[&str]] = &[
        &["version"],
        &["--help"],
        &["config", "show"],
        &["jobs"],
        &["logs", &job],
        &["logs", &job, "7"],
        &["storage", "ls"],
        &["storage", "ls", "many/"],
        &["storage", "get", "big.txt"],
        &["storage", "get", "big.txt", "-"],
        &["hello", "--calls", "50"],
        &["test"],
    ];
    for args in commands {
        let (status, stdout, stderr) = piped_into_head(dir.path(), args);
        assert_eq!(status, 0, "quelea {args:?} | head -1: {stdout}\n{stderr}");
        assert_eq!(stdout.lines().count(), 1, "quelea {args:?}: {stdout}");
        for bad in ["panicked", "Broken pipe", "error", "Traceback"] {
            assert!(!stderr.contains(bad), "quelea {args:?} | head -1: {stderr}");
        }
    }
}

/// Runs `quelea ARGS` in a real pseudo-terminal (util-linux `script`), and
/// returns what the terminal received.
fn in_a_terminal(storage: &std::path::Path, args: &str) -> String {
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_quelea"));
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("QUELEA_STORAGE_DIR", storage)
        .env("HOME", storage)
        .env("QUELEA_WORKERS", "2")
        .env("TERM", "xterm")
        .env_remove("QUELEA_CONFIG_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a terminal shows of each line: escape sequences dropped, and a
/// carriage return starting the line over.
fn rendered_lines(raw: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then one final byte in @..~
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
        .split('\n')
        .map(|line| {
            let line = line.trim_end_matches('\r');
            line.rsplit('\r').next().unwrap_or("").to_owned()
        })
        .collect()
}

#[test]
fn progress_and_rates_read_well_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // 400 calls of 10 ms on 2 runners: about 2 s, so the bar shows.
    let raw = in_a_terminal(dir.path(), "hello --calls 400 --sleep-ms 10");
    let bar_frames: Vec<&str> = raw
        .split(['\r', '\n'])
        .filter(|f| f.contains("/400 calls"))
        .collect();
    assert!(!bar_frames.is_empty(), "no progress bar drawn: {raw:?}");
    for frame in &bar_frames {
        // `187 calls/s`, never `399,561.1852/s`.
        let rate = frame
            .split("calls  ")
            .nth(1)
            .and_then(|r| r.split(" calls/s").next())
            .unwrap_or_else(|| panic!("no rate in {frame:?}"));
        assert!(
            rate == "-" || rate.chars().all(|c| c.is_ascii_digit() || c == '.'),
            "rate {rate:?} in {frame:?}"
        );
        assert!(
            !rate.contains('.') || rate.split('.').nth(1).unwrap().len() == 1,
            "{frame:?}"
        );
    }
    // The bar is cleared: the report starts on a line of its own.
    let lines = rendered_lines(&raw);
    let map_line = lines
        .iter()
        .find(|l| l.contains("calls of x*x"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        map_line.starts_with("map: 400 calls of x*x"),
        "{map_line:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("█")), "{lines:#?}");
    let summary = lines
        .iter()
        .find(|l| l.contains("executor start included"))
        .unwrap();
    let rate = summary.rsplit(": ").next().unwrap();
    assert!(
        rate.ends_with(" calls/s") && !rate.contains(','),
        "{summary:?}"
    );
}

#[test]
fn self_test_reports_each_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(quelea(dir.path()).env("QUELEA_WORKERS", "2").arg("test"));
    for check in [
        "storage",
        "map",
        "map_reduce",
        "failing call",
        "partitioner",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok ") && l[5..].trim_start().starts_with(check)),
            "{check}: {out}"
        );
    }
    assert!(out.contains("all 5 checks passed"), "{out}");
    // It cleans up after itself.
    let jobs = run_ok(quelea(dir.path()).arg("jobs"));
    assert!(jobs.starts_with("no jobs in"), "{jobs}");

    // A storage that does not answer: each check says so, and it fails.
    let out = quelea(dir.path())
        .args(["test", "--timeout", "20"])
        .env("QUELEA_STORAGE", "s3")
        .env("QUELEA_S3_ENDPOINT", "http://127.0.0.1:9")
        .env("QUELEA_S3_ALLOW_HTTP", "true")
        .env("QUELEA_S3_ACCESS_KEY_ID", "k")
        .env("QUELEA_S3_SECRET_ACCESS_KEY", "s")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("FAIL  storage"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:9"), "{stdout}");
    assert!(stderr.contains("checks failed: storage"), "{stderr}");
}

#[test]
fn errors_name_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    // S3 without any credentials: say so, not an instance metadata URL.
    let mut cmd = quelea(dir.path());
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "QUELEA_S3_ACCESS_KEY_ID",
        "QUELEA_S3_SECRET_ACCESS_KEY",
    ] {
        cmd.env_remove(var);
    }
    let err = run_err(
        cmd.args(["storage", "ls"])
            .env("QUELEA_STORAGE", "s3")
            .env("QUELEA_S3_ENDPOINT", "http://127.0.0.1:9")
            .env("QUELEA_S3_ALLOW_HTTP", "true"),
    );
    assert!(err.contains("no S3 credentials found"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");

    // aws_lambda: every missing setting at once, in plain words.
    let err = run_err(
        quelea(dir.path())
            .args(["config", "show"])
            .env("QUELEA_BACKEND", "aws_lambda"),
    );
    for needed in [
        "aws_lambda.function_name",
        "aws_lambda.region",
        "aws_lambda.secret_access_key",
        "storage: s3",
    ] {
        assert!(err.contains(needed), "{needed}: {err}");
    }
    assert!(!err.contains("resolved config"), "{err}");
}
