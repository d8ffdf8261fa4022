"""``python -m quelea_airflow._detached <workdir>``: owns one quelea job.

Reads (and deletes) ``<workdir>/spec.pkl``, creates the executor, submits,
writes ``submitted.json`` (the job handles) or ``failed.json`` (why not), and
stays until the job is finished. SIGTERM/SIGINT cancel the job. A
``deadline`` in the spec bounds its life. See ``quelea_airflow._job``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

import cloudpickle


def _write(workdir: str, name: str, data: dict) -> None:
    tmp = os.path.join(workdir, f".{name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(workdir, name))


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _stub_modules(modules: dict[str, str]) -> None:
    """The functions' DAG-file modules came by value and are not importable here.
    Empty stand-ins with their file name let quelea ship them by value again and
    name the file (and line) in remote tracebacks."""
    import types

    for name, path in modules.items():
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__file__ = path
            sys.modules[name] = module


def main(workdir: str) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    import quelea
    from quelea.exceptions import WaitTimeoutError

    spec_path = os.path.join(workdir, "spec.pkl")
    executor = None
    try:
        with open(spec_path, "rb") as f:
            spec = cloudpickle.loads(f.read())
        os.unlink(spec_path)  # it may hold secrets
        _stub_modules(spec.get("by_value_modules") or {})
        executor = quelea.FunctionExecutor(config=spec["config"], **spec["executor_kwargs"])
        futures = getattr(executor, spec["kind"])(*spec["args"], **spec["kwargs"])
        futures = [futures] if isinstance(futures, quelea.ResponseFuture) else list(futures)
        parts: dict[str, list] = {}
        for f in futures:
            parts.setdefault(f.job_key, []).append(f)
        handles = [executor.job_handle(fs) for fs in parts.values()]
    except _Stop:
        return 143
    except BaseException as e:  # noqa: BLE001 - reported to the submitting task
        _write(
            workdir,
            "failed.json",
            {"error_type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()},
        )
        if executor is not None:
            executor.close()
        return 1
    _write(workdir, "submitted.json", {"handles": handles, "executor_id": executor.executor_id})
    print(f"submitted {spec['kind']} as executor {executor.executor_id}", flush=True)
    deadline = spec.get("deadline")
    code = 0
    try:
        while True:
            step = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.time()))
            try:
                # quelea's wait raises WaitTimeoutError when time runs out first.
                executor.wait(futures, throw_except=False, timeout=step or 0.001)
                print("job finished", flush=True)
                break
            except WaitTimeoutError:
                pass
            if deadline is not None and time.time() >= deadline:
                print("deadline passed: cancelling the job", flush=True)
                executor.cancel(futures)
                code = 2
                break
    except _Stop as e:
        print(f"{e}: cancelling the job", flush=True)
        try:
            executor.cancel(futures)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        code = 143
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        executor.close()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
