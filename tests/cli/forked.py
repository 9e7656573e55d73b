"""Run the seg commands as processes forked from one warm interpreter, for the many command-line tests.

A fresh `seg-train` spends about 3 s importing torch, Hydra and seg before it reads its command line, and
the CLI tests start about sixty of them. Here one helper process imports all that once and then forks a
child per command: each child is still its own process (its own exit status, stdout and stderr, working
folder, environment, signal handlers and module state), it only skips the imports. The tests that are
about the process itself (the console script, a signal mid-run) still start the installed command.

The helper never runs torch code itself, so forking it is as safe as the DataLoader's own fork workers. On
other systems than Linux (macOS forks badly once system frameworks are loaded) each command starts afresh.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

MODULES = {"seg-train": "seg.cli.train", "seg-eval": "seg.cli.evaluate", "seg-predict": "seg.cli.predict"}
# What the commands import before and while they run; a name that has gone is skipped, never an error.
# torch._inductor comes in through torch.use_deterministic_algorithms at every training start (1.5 s).
PRELOAD = [*MODULES.values(), "seg.cli.callbacks", "seg.train.fit", "seg.train.resume", "seg.inference.evaluate",
           "seg.inference.predict", "torch._inductor.config", "torch.utils.tensorboard", "skimage.transform"]

_HELPER = r"""
import atexit, importlib, json, os, sys, threading, traceback

for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:  # gone or broken: the command that needs it reports that itself
        pass
requests, replies = sys.stdin, sys.stdout
replies.write("ready\n")
replies.flush()
for line in requests:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the command, as its console script runs it: sys.exit(main())
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, job["stdout"], os.O_WRONLY | os.O_TRUNC),
                                (2, job["stderr"], os.O_WRONLY | os.O_TRUNC)):
            os.dup2(os.open(path, flags), fd)
        sys.stdin = open(os.devnull)
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        sys.argv = job["argv"]
        del line, job, requests, replies
        try:
            raise SystemExit(importlib.import_module(sys.argv.pop(0)).main())
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc()
            code = 1
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        # Python's own exit, less the teardown of every module (1 s with torch loaded): threads, atexit, flush.
        getattr(threading, "_shutdown", lambda: None)()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    replies.write(f"{pid}\n")
    replies.flush()
    _, status = os.waitpid(pid, 0)
    replies.write(f"{os.waitstatus_to_exitcode(status)}\n")
    replies.flush()
"""

_helper: subprocess.Popen | None = None
_pending = b""  # what the helper has written beyond the line last read


def _start() -> subprocess.Popen:
    global _helper, _pending
    if _helper is None or _helper.poll() is not None:
        _helper = subprocess.Popen([sys.executable, "-c", _HELPER, json.dumps(PRELOAD)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, bufsize=0)
        atexit.register(_helper.kill)
        _pending = b""
        if _reply(_helper, 120) != "ready":
            raise RuntimeError("the forking helper did not start")
    return _helper


def _reply(helper: subprocess.Popen, timeout: float) -> str:
    """The helper's next line, read from the pipe itself so that a timeout never waits on buffered text."""
    global _pending
    while b"\n" not in _pending:
        if not select.select([helper.stdout], [], [], timeout)[0]:
            raise TimeoutError
        chunk = os.read(helper.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError("the forking helper died")
        _pending += chunk
    line, _pending = _pending.split(b"\n", 1)
    return line.decode()


def run_forked(cmd: str, args: list[str], cwd: Path, env: dict[str, str],
               timeout: float = 300) -> subprocess.CompletedProcess:
    """`cmd *args` in cwd with exactly env, as subprocess.run(..., capture_output=True, text=True) gives it."""
    if not sys.platform.startswith("linux"):
        exe = Path(sys.executable).parent / cmd
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", MODULES[cmd]]
        return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    helper = _start()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        out.touch()
        err.touch()
        # argv[0] for the child is the module it runs; the command then sees the installed script's path.
        argv = [MODULES[cmd], str(Path(sys.executable).parent / cmd), *args]
        job = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        helper.stdin.write((json.dumps(job) + "\n").encode())
        pid = int(_reply(helper, 30))
        try:
            code = int(_reply(helper, timeout))
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            _reply(helper, 30)
            raise subprocess.TimeoutExpired([cmd, *args], timeout, out.read_text(), err.read_text()) from None
        return subprocess.CompletedProcess([cmd, *args], code, out.read_text(), err.read_text())
