//! What the integration tests that start worker servers share: the
//! storage servers and clients agree on, and `quelea worker serve` processes
//! on 127.0.0.1, stopped by PID.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use quelea::ConfigBuilder;

/// Job storage of the servers and clients: a local directory, or with
/// `QTEST_STORAGE=KIND` the bucket `quelea-test` of that kind, its settings
/// from the environment (`s3`: the `QUELEA_S3_*` of scripts/s3-server.sh;
/// `azure`: the `QUELEA_AZURE_*` of scripts/cloud-emulators.sh).
pub fn shared_storage() -> Option<String> {
    std::env::var("QTEST_STORAGE")
        .ok()
        .filter(|k| !k.is_empty())
}

/// The storage settings servers and clients share.
pub fn storage_builder(dir: &Path) -> ConfigBuilder {
    let builder = if let Some(kind) = shared_storage() {
        ConfigBuilder::new()
            .no_file()
            .set("storage", kind.as_str())
            .set("bucket", "quelea-test")
    } else {
        ConfigBuilder::new().no_file().env(Vec::new())
    };
    builder.set("localdisk.root", dir.to_str().unwrap())
}

pub struct WorkerServer {
    pub child: Child,
    pub url: String,
}

impl WorkerServer {
    /// Starts `quelea worker serve` on a free port with this shared secret;
    /// `config_yaml` is its config file, `env` more of its environment.
    pub fn start(
        dir: &Path,
        name: &str,
        secret: &str,
        config_yaml: &str,
        env: &[(&str, &str)],
    ) -> WorkerServer {
        let config_file = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_file, config_yaml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quelea"));
        cmd.args(["worker", "serve", "--port", "0", "--workers", "2"])
            .env("QUELEA_CONFIG_FILE", &config_file)
            .env("QUELEA_HTTP_SECRET", secret)
            .env("QUELEA_STORAGE_DIR", dir)
            .envs(env.iter().copied())
            .env_remove("PORT")
            .stdout(Stdio::piped());
        if let Some(kind) = shared_storage() {
            cmd.env("QUELEA_STORAGE", kind)
                .env("QUELEA_BUCKET", "quelea-test");
        }
        let mut child = cmd.spawn().expect("the quelea binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("worker server {name} did not say where it listens"));
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in `{line}`"))
            .to_owned();
        WorkerServer { child, url }
    }

    pub fn stop(mut self) {
        // By PID, then reaped: runners follow through their parent-death signal.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
