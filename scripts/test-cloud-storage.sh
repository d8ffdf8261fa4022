#!/usr/bin/env bash
# The storage tests against the GCS and Azure Blob emulators (fake-gcs-server
# and Azurite on 127.0.0.1, started and stopped by PID by
# scripts/cloud-emulators.sh): the storage conformance suite, the engine
# conformance with Azure as job storage (local and http backends), and the
# Python partitioner over gs:// and az:// inputs (local and http backends).
# scripts/test.sh calls this; it runs on its own too.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh

cargo clippy -p quelea-storage --all-targets --features emulator-tests -- -D warnings
EMU_DIR="$(mktemp -d)"
trap 'scripts/cloud-emulators.sh stop "$EMU_DIR"; rm -rf "$EMU_DIR"' EXIT
eval "$(scripts/cloud-emulators.sh start "$EMU_DIR")"
cargo test -p quelea-storage --features emulator-tests
# Job storage in Azurite, on the local and the http backend (worker servers
# sharing it with the client). GCS cannot be job storage against
# fake-gcs-server: it lacks the XML API writes object_store uses (see the
# conformance tests); it is read as input data instead.
QTEST_STORAGE=azure cargo test -p quelea --test engine
QTEST_STORAGE=azure cargo test -p quelea-cli --test local_conformance --test http_backend
"$VENV/bin/maturin" develop --quiet
"$VENV/bin/python" -m pytest tests/python/cloud_storage_emulators.py -q
