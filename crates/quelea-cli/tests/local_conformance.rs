//! The conformance tests (crates/quelea-conformance) on the `local`
//! backend: real runner processes of the `quelea` binary, which serves the
//! CLI builtins. Job storage is a temporary directory, or with
//! `QTEST_STORAGE=s3` the S3 server of scripts/s3-server.sh (`azure`: the
//! Azurite emulator of scripts/cloud-emulators.sh; any storage kind whose
//! settings are in the environment).

use std::sync::Arc;

use libtest_mimic::Arguments;
use quelea::{ConfigBuilder, RunnerCommand};
use quelea_conformance::Backend;

fn main() {
    quelea_conformance::serve_second_client_if_asked();
    let args = Arguments::from_args();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_owned();
    let storage = std::env::var("QTEST_STORAGE").ok();
    let config = move || {
        let builder = ConfigBuilder::new().no_file();
        let builder = if let Some(kind) = &storage {
            builder
                .set("storage", kind.as_str())
                .set("bucket", "quelea-test")
        } else {
            builder.env(Vec::new()).set("localdisk.root", root.as_str())
        };
        builder.set("local.workers", 2)
    };
    let backend = Backend {
        name: "local",
        config: Arc::new(config),
        rust_runner: Some(RunnerCommand {
            program: env!("CARGO_BIN_EXE_quelea").into(),
            args: Vec::new(),
            env: vec![("QUELEA_RUNNER".into(), "rust".into())],
        }),
    };
    let conclusion = libtest_mimic::run(&args, quelea_conformance::trials(&backend));
    drop(dir);
    conclusion.exit();
}
