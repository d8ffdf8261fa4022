//! What user code does to its runner process cannot hang or orphan anything:
//! calls that fork, crash after forking, leave children behind, read stdin
//! or close fd 1, on real runner processes (this binary is its own runner,
//! the same-binary model).
//!
//! Every wait has a deadline, and every process a call starts is checked by
//! PID and by process group to be gone (a zombie waiting for its new parent
//! to reap it counts as gone: it runs nothing and holds nothing).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

#[path = "common/procs.rs"]
mod procs;
use procs::{alive, stat};
use quelea::{
    Config, ConfigBuilder, Executor, FailureReason, FunctionRef, Functions, MapOptions, ReturnWhen,
};

struct Fns {
    functions: Functions,
    square: FunctionRef<i64, i64>,
    fork_then_sleep: FunctionRef<(String, u64), u64>,
    fork_then_crash: FunctionRef<String, i32>,
    spawn_sleepers: FunctionRef<(String, u32), u32>,
    read_stdin: FunctionRef<i32, usize>,
    close_fd1: FunctionRef<i32, i32>,
    hog_children: FunctionRef<(u64, u32), u32>,
}

/// fork(2) without the process's fork handlers (a raw `clone` with only
/// SIGCHLD): the child keeps the protocol descriptors, as a child of any
/// code that forks behind libc's back would.
fn raw_fork() -> i32 {
    // SAFETY: clone with SIGCHLD and no stack is fork; the child below only
    // makes async-signal-safe calls.
    unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) as i32 }
}

fn functions() -> Fns {
    let mut functions = Functions::new();
    let square = functions.register("square", |x: i64| x * x);
    // Forks a child that sleeps 20 s and then spins, holding the runner's
    // pipes; then sleeps `ms` itself.
    let fork_then_sleep = functions.register("fork_then_sleep", |(dir, ms): (String, u64)| {
        let child = raw_fork();
        if child == 0 {
            // SAFETY: async-signal-safe calls only, in the forked child.
            unsafe {
                libc::sleep(20);
            }
            loop {
                std::hint::spin_loop();
            }
        }
        std::fs::write(Path::new(&dir).join("child.pid"), child.to_string()).unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        ms
    });
    // Forks a child that sleeps, then crashes the runner.
    let fork_then_crash = functions.register("fork_then_crash", |dir: String| {
        let child = raw_fork();
        if child == 0 {
            // SAFETY: async-signal-safe calls only, in the forked child.
            unsafe {
                libc::sleep(300);
                libc::_exit(0);
            }
        }
        std::fs::write(Path::new(&dir).join("child.pid"), child.to_string()).unwrap();
        // SAFETY: deliberately crashing the runner is the point of this test.
        unsafe {
            std::ptr::null_mut::<i32>().write_volatile(1);
        }
        child
    });
    // Starts `n` `sleep 300` processes and returns, leaving them running.
    let spawn_sleepers = functions.register("spawn_sleepers", |(dir, n): (String, u32)| {
        let mut pids = Vec::new();
        for _ in 0..n {
            let child = Command::new("sleep")
                .arg("300")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            pids.push(child.id().to_string());
            std::mem::forget(child);
        }
        std::fs::write(Path::new(&dir).join("sleepers"), pids.join(" ")).unwrap();
        n
    });
    let read_stdin = functions.register("read_stdin", |_: i32| {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).unwrap();
        bytes.len()
    });
    let close_fd1 = functions.register("close_fd1", |x: i32| {
        // SAFETY: closing our own stdout is the point of this test (the
        // second time on one runner it is already closed: EBADF, ignored).
        unsafe {
            libc::close(1);
        }
        x
    });
    // Starts `n` copies of this binary that each hold `mb` MiB, then waits.
    let hog_children = functions.register("hog_children", |(mb, n): (u64, u32)| {
        let mut children: Vec<_> = (0..n)
            .map(|_| {
                Command::new(std::env::current_exe().unwrap())
                    .env("QTEST_HOG_MB", mb.to_string())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in &mut children {
            let _ = child.wait();
        }
        n
    });
    Fns {
        functions,
        square,
        fork_then_sleep,
        fork_then_crash,
        spawn_sleepers,
        read_stdin,
        close_fd1,
        hog_children,
    }
}

fn config(dir: &Path) -> Config {
    ConfigBuilder::new()
        .no_file()
        .env(Vec::new())
        .set("localdisk.root", dir.to_str().unwrap())
        .set("local.workers", 2)
        .build()
        .unwrap()
}

fn check(cond: bool, message: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(message.into().into())
    }
}

/// Live processes (not zombies) in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| stat(*pid).is_some_and(|(state, g)| g == pgid && state != 'Z'))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to 10 s) until none of `pids` is alive and no group in
/// `groups` has a live member.
fn all_gone(pids: &[i32], groups: &[i32], what: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        let members: Vec<i32> = groups.iter().flat_map(|g| group_members(*g)).collect();
        if left.is_empty() && members.is_empty() {
            return Ok(());
        }
        check(
            Instant::now() < deadline,
            format!("{what}: still running {left:?}, left in the runners' groups {members:?}"),
        )?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_pids(path: PathBuf) -> Result<Vec<i32>, Failed> {
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect())
}

fn runner_groups(exec: &Executor) -> Vec<i32> {
    exec.runner_pids().into_iter().map(|p| p as i32).collect()
}

/// Drops the executor, which must not take long.
fn close(exec: Executor) -> Result<(), Failed> {
    let started = Instant::now();
    drop(exec);
    check(
        started.elapsed() < Duration::from_secs(5),
        format!("close took {:?}", started.elapsed()),
    )
}

fn a_forking_call_times_out_on_time_and_others_do_not_wait() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = Executor::with_config(config(dir.path()))?;
    exec.warm_up()?;
    let groups = runner_groups(&exec);
    let started = Instant::now();
    let forked = exec.map(
        &fns.fork_then_sleep,
        [(dir.path().to_str().unwrap().to_owned(), 60_000)],
        MapOptions::default().timeout(Duration::from_secs(2)),
    )?;
    let squares = exec.map(&fns.square, 0..200i64, MapOptions::default())?;
    exec.wait(
        &forked,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(30)),
    )?;
    let took = started.elapsed();
    let error = forked
        .get(0)
        .unwrap()
        .call_error()
        .ok_or("the forking call timed out")?;
    check(error.reason == FailureReason::Timeout, format!("{error:?}"))?;
    // Its own 2 s timeout, not the 20 s its child sleeps.
    check(
        took < Duration::from_secs(10),
        format!("timed out after {took:?}"),
    )?;
    let results = exec.get_result(&squares, Some(Duration::from_secs(30)))?;
    check(
        results == (0..200i64).map(|x| x * x).collect::<Vec<_>>(),
        "squares",
    )?;
    let child = read_pids(dir.path().join("child.pid"))?;
    all_gone(&child, &[], "after the timeout")?;
    close(exec)?;
    all_gone(&child, &groups, "after close")
}

fn a_crash_after_fork_is_reported_at_once() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = Executor::with_config(config(dir.path()))?;
    exec.warm_up()?;
    let groups = runner_groups(&exec);
    let started = Instant::now();
    let futures = exec.map(
        &fns.fork_then_crash,
        [dir.path().to_str().unwrap().to_owned()],
        MapOptions::default(),
    )?;
    exec.wait(
        &futures,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(30)),
    )?;
    let took = started.elapsed();
    let error = futures
        .get(0)
        .unwrap()
        .call_error()
        .ok_or("the call crashed")?;
    check(
        error.reason == FailureReason::WorkerCrashed && error.message.contains("SIGSEGV"),
        format!("{error:?}"),
    )?;
    check(
        took < Duration::from_secs(10),
        format!("reported after {took:?}"),
    )?;
    let child = read_pids(dir.path().join("child.pid"))?;
    all_gone(&child, &[], "after the crash")?;
    // The slot's new runner works.
    let results = exec.get_result(
        &exec.map(&fns.square, 0..20i64, MapOptions::default())?,
        Some(Duration::from_secs(30)),
    )?;
    check(results.len() == 20, "calls after the crash run")?;
    close(exec)?;
    all_gone(&child, &groups, "after close")
}

fn children_left_behind_die_with_close() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = Executor::with_config(config(dir.path()))?;
    exec.warm_up()?;
    let groups = runner_groups(&exec);
    let futures = exec.map(
        &fns.spawn_sleepers,
        [(dir.path().to_str().unwrap().to_owned(), 50)],
        MapOptions::default(),
    )?;
    let results = exec.get_result(&futures, Some(Duration::from_secs(60)))?;
    check(results == vec![50], format!("{results:?}"))?;
    let sleepers = read_pids(dir.path().join("sleepers"))?;
    check(sleepers.len() == 50, format!("{sleepers:?}"))?;
    check(
        sleepers.iter().all(|p| alive(*p)),
        "the sleepers outlive their call",
    )?;
    close(exec)?;
    all_gone(&sleepers, &groups, "after close")
}

fn children_left_behind_die_with_a_killed_client() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let mut driver = Command::new(std::env::current_exe()?)
        .env("QTEST_DRIVER", "sleepers")
        .env("QTEST_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    // The driver prints its runner pids once the sleepers are running (its
    // own get_result has a deadline, so this line comes or the stream ends).
    let line = lines.next().ok_or("the driver prints its runner pids")??;
    let runners: Vec<i32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let sleepers = read_pids(dir.path().join("sleepers"))?;
    check(sleepers.len() == 50, format!("{sleepers:?}"))?;
    check(sleepers.iter().all(|p| alive(*p)), "the sleepers run")?;
    driver.kill()?;
    driver.wait()?;
    let mut everyone = sleepers.clone();
    everyone.extend(&runners);
    all_gone(&everyone, &runners, "after the client was SIGKILLed")
}

fn stdin_is_empty_and_closing_fd1_breaks_nothing() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = Executor::with_config(config(dir.path()))?;
    exec.warm_up()?;
    let runners = exec.runner_pids();
    // Several calls, so both runners read stdin: each sees end-of-file at
    // once (not another call's input bytes).
    let read = exec.map(&fns.read_stdin, 0..8, MapOptions::default())?;
    let read = exec.get_result(&read, Some(Duration::from_secs(30)))?;
    check(read == vec![0; 8], format!("stdin gave {read:?}"))?;
    let closed = exec.map(&fns.close_fd1, 0..8, MapOptions::default())?;
    let closed = exec.get_result(&closed, Some(Duration::from_secs(30)))?;
    check(closed == (0..8).collect::<Vec<_>>(), format!("{closed:?}"))?;
    let squares = exec.map(&fns.square, 0..500i64, MapOptions::default())?;
    let squares = exec.get_result(&squares, Some(Duration::from_secs(30)))?;
    check(
        squares == (0..500i64).map(|x| x * x).collect::<Vec<_>>(),
        "squares",
    )?;
    check(
        exec.runner_pids() == runners,
        format!("no runner died: {runners:?} then {:?}", exec.runner_pids()),
    )?;
    close(exec)
}

fn the_memory_limit_counts_the_children() -> Result<(), Failed> {
    let fns = functions();
    let dir = tempfile::tempdir()?;
    let exec = Executor::with_config(config(dir.path()))?;
    exec.warm_up()?;
    let groups = runner_groups(&exec);
    // Two children of 100 MiB each: neither the runner nor any one child is
    // over 150 MiB, together they are.
    let futures = exec.map(
        &fns.hog_children,
        [(100, 2)],
        MapOptions::default()
            .memory_limit_mb(150)
            .timeout(Duration::from_secs(60)),
    )?;
    exec.wait(
        &futures,
        ReturnWhen::AllCompleted,
        Some(Duration::from_secs(60)),
    )?;
    let error = futures
        .get(0)
        .unwrap()
        .call_error()
        .ok_or("the call went over its limit")?;
    check(
        error.reason == FailureReason::OutOfMemory,
        format!("{error:?}"),
    )?;
    check(
        error.message.contains("memory limit of 150 MiB"),
        error.message.clone(),
    )?;
    close(exec)?;
    all_gone(&[], &groups, "after the memory kill")
}

/// A second client process: leaves 50 sleepers behind and waits to be killed.
fn driver(mode: &str) -> ! {
    let fns = functions();
    match mode {
        "sleepers" => {
            let dir = std::env::var("QTEST_DIR").unwrap();
            let exec = Executor::with_config(config(Path::new(&dir))).unwrap();
            let futures = exec
                .map(&fns.spawn_sleepers, [(dir, 50)], MapOptions::default())
                .unwrap();
            exec.get_result(&futures, Some(Duration::from_secs(60)))
                .unwrap();
            let pids: Vec<String> = exec.runner_pids().iter().map(u32::to_string).collect();
            println!("{}", pids.join(" "));
            // Killed by the test long before this ends.
            std::thread::sleep(Duration::from_secs(120));
            std::process::exit(1);
        }
        other => panic!("unknown driver mode {other}"),
    }
}

/// A child of `hog_children`: holds `mb` MiB (every page touched) for 30 s.
fn hog(mb: &str) -> ! {
    let mb: usize = mb.parse().unwrap();
    let blocks: Vec<Vec<u8>> = (0..mb).map(|_| vec![1u8; 1 << 20]).collect();
    std::hint::black_box(&blocks);
    std::thread::sleep(Duration::from_secs(30));
    std::process::exit(0);
}

type TestFn = fn() -> Result<(), Failed>;

fn main() {
    if let Ok(mb) = std::env::var("QTEST_HOG_MB") {
        hog(&mb);
    }
    let fns = functions();
    quelea::serve_if_runner(&fns.functions);
    if let Ok(mode) = std::env::var("QTEST_DRIVER") {
        driver(&mode);
    }
    let mut args = Arguments::from_args();
    // Runner pools and process counting: one test at a time.
    args.test_threads.get_or_insert(1);
    let tests: Vec<(&str, TestFn)> = vec![
        (
            "a_forking_call_times_out_on_time_and_others_do_not_wait",
            a_forking_call_times_out_on_time_and_others_do_not_wait,
        ),
        (
            "a_crash_after_fork_is_reported_at_once",
            a_crash_after_fork_is_reported_at_once,
        ),
        (
            "children_left_behind_die_with_close",
            children_left_behind_die_with_close,
        ),
        (
            "children_left_behind_die_with_a_killed_client",
            children_left_behind_die_with_a_killed_client,
        ),
        (
            "stdin_is_empty_and_closing_fd1_breaks_nothing",
            stdin_is_empty_and_closing_fd1_breaks_nothing,
        ),
        (
            "the_memory_limit_counts_the_children",
            the_memory_limit_counts_the_children,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| Trial::test(name, f))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
