"""Run one job script (bash, sh, python, powershell or identity) and turn it into an Outcome.

Its stdout and stderr are read from two pipes, each handed on as it arrives with the name of
its stream (shared/loglines.py), in the order the two arrived. Whatever way it ends, nothing
it started outlives it: on POSIX its session is killed, on Windows its Job Object ended
(shared/winjob.py), where it also runs in a hidden console of its own."""

from __future__ import annotations

import asyncio
import codecs
import errno
import json
import logging
import ntpath
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tagrun.shared.interpreters import NO_BASH_ON_WINDOWS, find_bash, with_utf8_output
from tagrun.shared.loglines import STDERR, STDOUT
from tagrun.shared.storable import storable_json
from tagrun.shared.winjob import CREATE_SUSPENDED, JobObject, JobObjectError

LANGUAGES: tuple[str, ...] = ("bash", "sh", "python", "powershell", "identity")
# Languages that run nothing (the result is the args): they need no work directory.
NO_PROCESS: frozenset[str] = frozenset({"identity"})

_log = logging.getLogger(__name__)

_TAIL_CHARS = 8192
_SAME_MOMENT_S = 0.001  # two pipes read this close together: which was written first is unknown
_MESSAGE_LINE_CHARS = 500
# After the tree is killed, EOF normally arrives at once; only a process that escaped the
# tree (e.g. via setsid) can hold the pipe open, and it must not hang the run forever.
_DRAIN_GRACE_S = 2.0

if sys.platform == "win32":
    # A console of its own, hidden (CREATE_NO_WINDOW): Ctrl+C and Ctrl+Break pressed in the
    # agent's console reach the agent, which drains, and never a job; and a job that changes
    # its console's code page (PowerShell's prologue below) changes no one else's.
    _CREATION_FLAGS = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
else:
    _CREATION_FLAGS = 0

_SUSPENDED = CREATE_SUSPENDED if sys.platform == "win32" else 0

_ARGS_NAME = "_tagrun_args.json"
_RESULT_NAME = "_tagrun_result.json"
_WRAPPER_NAME = "_tagrun_wrapper.py"

# Runs under whatever interpreter the job uses, which may not have tagrun installed, so it
# must stay self-contained and stdlib-only. python_wrapper_main() execs this same text.
_WRAPPER_SOURCE = '''\
"""tagrun Python job wrapper: runs the job script and calls its main(**args)."""
import importlib.util
import io
import json
import os
import sys
import traceback
import types


def _tagrun_exit_code(exc):
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def tagrun_wrapper(argv):
    if not argv:
        print("usage: _tagrun_wrapper.py SCRIPT", file=sys.stderr)
        return 2
    script = os.path.abspath(argv[-1])
    with open(os.environ["TAGRUN_ARGS_FILE"], encoding="utf-8") as f:
        args = json.load(f)
    sys.argv = [script]
    script_dir = os.path.dirname(script)
    if sys.path[:1] != [script_dir]:
        sys.path.insert(0, script_dir)
    # The script is imported as the module its file names (main), and stays in sys.modules:
    # what it defines can then be pickled, so multiprocessing's children find it again, by
    # inheriting it (fork) or by importing it from sys.path (spawn, forkserver). Not as
    # __main__, so that a job's `if __name__ == "__main__":` block does not run.
    name = os.path.splitext(os.path.basename(script))[0]
    module = types.ModuleType(name)
    module.__file__ = script
    module.__spec__ = importlib.util.spec_from_file_location(name, script)
    module.__loader__ = module.__spec__.loader
    sys.modules[name] = module
    try:
        with io.open_code(script) as f:
            code = compile(f.read(), script, "exec")
        exec(code, module.__dict__)
        main = module.__dict__.get("main")
        if callable(main):
            text = json.dumps(main(**args), default=str)
            with open(os.environ["TAGRUN_RESULT_FILE"], "w", encoding="utf-8") as f:
                f.write(text)
    except SystemExit as exc:
        return _tagrun_exit_code(exc)
    except BaseException as exc:
        sys.stdout.flush()
        # Skip this wrapper's frame so the traceback starts where the job's code is.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(tagrun_wrapper(sys.argv[1:]))
'''


class ErrorKind:
    SCRIPT_ERROR = "script_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


@dataclass(frozen=True)
class JobUser:
    """POSIX: the unprivileged user a job runs as, rather than the agent's own (root)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


@dataclass(frozen=True)
class ExecSpec:
    language: str
    content: str
    args: dict[str, Any]
    timeout_s: float | None
    work_dir: Path
    python_cmd: Sequence[str] | None = None
    env: Mapping[str, str] | None = None
    user: JobUser | None = None  # None: the job runs as this process's user
    withhold: frozenset[str] = frozenset()  # this process's variables the job never sees


def job_identity_env(job_id: int, workspace: str, attempt: int, tag: str, worker: str
                     ) -> dict[str, str]:
    """What a job's process learns about itself (like Windmill's WM_JOB_ID)."""
    return {"TAGRUN_JOB_ID": str(job_id), "TAGRUN_WORKSPACE": workspace,
            "TAGRUN_JOB_ATTEMPT": str(attempt), "TAGRUN_JOB_TAG": tag, "TAGRUN_WORKER": worker}


@dataclass(frozen=True)
class Outcome:
    status: str
    result: Any = None
    error: dict[str, str] | None = None


class _LaunchError(Exception):
    """The job cannot even be started; reported as an internal error, not a script error."""


def _failed(kind: str, message: str) -> Outcome:
    return Outcome("failed", error={"kind": kind, "message": message})


def _cancelled() -> Outcome:
    return Outcome("cancelled", error={"kind": ErrorKind.CANCELLED, "message": "cancelled"})


_STREAM_OF = {1: STDOUT, 2: STDERR}  # by file descriptor


class _JobProtocol(asyncio.SubprocessProtocol):
    """The job's process as the event loop sees it: its output, decoded as it arrives on each
    pipe (called back at once, so the two streams keep their order of arrival); when both
    pipes are closed; and when the process itself exits.

    Process.wait() on Python 3.11 resolves only once every pipe is closed, so a background
    grandchild still holding stdout would make a finished job look like it is still running:
    the exit is watched apart from the pipes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 emit: Callable[[str, str], None]) -> None:
        self._emit = emit
        # One decoder per pipe: a character split across reads of one pipe stays whole.
        self._decoders = {fd: codecs.getincrementaldecoder("utf-8")(errors="replace")
                          for fd in _STREAM_OF}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()  # both pipes at EOF

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        decoder = self._decoders.get(fd)
        if decoder is not None:
            self._emit(decoder.decode(data), _STREAM_OF[fd])

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._end(fd)
        if not self._decoders and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def finish(self) -> None:
        """Hand on what is left of each pipe's last character; nothing is read after."""
        for fd in list(self._decoders):
            self._end(fd)

    def _end(self, fd: int) -> None:
        decoder = self._decoders.pop(fd, None)
        if decoder is not None:
            self._emit(decoder.decode(b"", final=True), _STREAM_OF[fd])


class Execution:
    """`on_output(text)` gets the job's output as it arrives, both streams together;
    `on_stream(text, stream)`, when given instead, gets it with the name of its stream."""

    def __init__(self, spec: ExecSpec, on_output: Callable[[str], None] | None = None, *,
                 on_stream: Callable[[str, str], None] | None = None) -> None:
        self._spec = spec
        self._on_output = on_output
        self._on_stream = on_stream
        self._transport: asyncio.SubprocessTransport | None = None
        self._job: JobObject | None = None  # Windows: holds every process of the job
        self._cancelled = False
        self._started = False
        # The end of each stream's output, and when its latest non-blank text arrived.
        self._tails = {STDOUT: "", STDERR: ""}
        self._last_at = {STDOUT: 0.0, STDERR: 0.0}
        self._output_broken = False

    async def run(self) -> Outcome:
        if self._started:
            raise RuntimeError("Execution.run() may only be called once")
        self._started = True
        if self._cancelled:
            return _cancelled()
        if self._spec.language == "identity":
            return Outcome("succeeded", result=self._spec.args)
        try:
            env = _job_env(self._spec)
            argv = _prepare(self._spec, env)
            transport, protocol = await _spawn(argv, self._spec.work_dir, env, self._emit,
                                               self._spec.user)
        except _LaunchError as exc:
            return _failed(ErrorKind.INTERNAL, str(exc))
        try:
            self._job = _contain(transport.get_pid())
        except _LaunchError as exc:
            transport.kill()  # still suspended: it has run nothing
            await protocol.exited
            await _drain(protocol.closed)
            transport.close()
            return _failed(ErrorKind.INTERNAL, str(exc))
        self._transport = transport
        if self._cancelled:  # cancel() arrived while we were starting
            self._kill(transport)
        try:
            timed_out = await self._supervise(transport, protocol)
        finally:
            # Once reaped, the pid may be reused; a late cancel() must not signal it.
            self._transport = None
            if self._job is not None:
                self._job.close()
                self._job = None
        return self._outcome(transport.get_returncode(), timed_out)

    def cancel(self) -> None:
        self._cancelled = True
        if self._transport is not None:
            self._kill(self._transport)

    def _kill(self, transport: asyncio.SubprocessTransport) -> None:
        """End the job's process and every process it started."""
        if self._job is not None:
            self._job.terminate()
        else:
            _kill_tree(transport)

    async def _supervise(
        self, transport: asyncio.SubprocessTransport, protocol: _JobProtocol
    ) -> bool:
        """Wait for exit, timeout or cancel; always leave no process behind. True on timeout."""
        try:
            done, _ = await asyncio.wait([protocol.exited], timeout=self._spec.timeout_s)
        finally:
            # Also runs when run() itself is cancelled, and after a normal exit it reaps
            # leftover background children that would otherwise hold the output pipes open.
            self._kill(transport)
            await protocol.exited
            await _drain(protocol.closed)
            protocol.finish()
            transport.close()
        return not done

    def _emit(self, text: str, stream: str) -> None:
        if not text:
            return
        self._tails[stream] = (self._tails[stream] + text)[-_TAIL_CHARS:]
        if not text.isspace():
            self._last_at[stream] = time.monotonic()
        try:
            if self._on_stream is not None:
                self._on_stream(text, stream)
            elif self._on_output is not None:
                self._on_output(text)
        except Exception:
            # A broken log sink must not stop us reading, or the job would block on a full pipe.
            if not self._output_broken:
                _log.exception("on_output callback failed; continuing without it")
            self._output_broken = True

    def _outcome(self, code: int | None, timed_out: bool) -> Outcome:
        if self._cancelled:
            return _cancelled()
        if timed_out:
            return _failed(ErrorKind.TIMEOUT, f"timed out after {self._spec.timeout_s:g} s")
        if code != 0:
            return _failed(ErrorKind.SCRIPT_ERROR,
                           _exit_message(code, _last_line(self._tail(STDERR))))
        return _collect_result(self._spec.work_dir / _RESULT_NAME, self._tail(STDOUT),
                               self._spec.user)

    def _tail(self, prefer: str) -> str:
        """The end of the output that the job's last line is in: of the stream that wrote
        last, or `prefer` when both wrote last together (read within a millisecond, their
        order cannot be told: a Python job's traceback on stderr and the line it printed on
        stdout just before, say)."""
        other = STDOUT if prefer == STDERR else STDERR
        if self._last_at[other] - self._last_at[prefer] > _SAME_MOMENT_S:
            return self._tails[other]
        return self._tails[prefer] if self._last_at[prefer] else self._tails[other]


async def _drain(closed: asyncio.Future[None]) -> None:
    done, _ = await asyncio.wait([closed], timeout=_DRAIN_GRACE_S)
    if not done:
        _log.warning("job output still open %.0f s after exit; stopped reading", _DRAIN_GRACE_S)


def _job_env(spec: ExecSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in spec.withhold}
    if spec.language == "python":
        # Unbuffered so logs stream live; UTF-8 because that is how we decode the output.
        env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    env.update(spec.env or {})
    if spec.user is not None:
        home = spec.user.home if os.path.isdir(spec.user.home) else str(spec.work_dir)
        env.update(HOME=home, USER=spec.user.name, LOGNAME=spec.user.name)
    env["TAGRUN_ARGS_FILE"] = str(spec.work_dir / _ARGS_NAME)
    env["TAGRUN_RESULT_FILE"] = str(spec.work_dir / _RESULT_NAME)
    return env


def _prepare(spec: ExecSpec, env: Mapping[str, str]) -> list[str]:
    """Write the job's files into work_dir and return the command line to run."""
    try:
        argv = _write_files(spec, env)
    except (OSError, TypeError, ValueError) as exc:  # TypeError: args not JSON-serialisable
        raise _LaunchError(f"cannot write job files into {spec.work_dir}: {exc}") from exc
    if spec.user is not None:
        _hand_over(spec.work_dir, spec.user)
    return argv


def _hand_over(work: Path, user: JobUser) -> None:
    """Give the job's directory and the files just written into it to the job's user.

    Only now: until this point the directory belongs to the agent, so no other job of that
    user can plant a link in it for the agent to write through."""
    try:
        for entry in work.iterdir():
            os.chown(entry, user.uid, user.gid, follow_symlinks=False)
        os.chown(work, user.uid, user.gid)
        work.chmod(0o700)
    except OSError as exc:
        raise _LaunchError(f"cannot hand the job's directory {work} to user {user.name!r}: "
                           f"{exc.strerror}") from exc


def _write_files(spec: ExecSpec, env: Mapping[str, str]) -> list[str]:
    work = spec.work_dir
    _write(work / _ARGS_NAME, json.dumps(spec.args))
    lang = spec.language
    if lang == "python":
        script = _write(work / "main.py", spec.content)
        wrapper = _write(work / _WRAPPER_NAME, _WRAPPER_SOURCE)
        return [*(spec.python_cmd or [sys.executable]), str(wrapper), str(script)]
    if lang in ("bash", "sh"):
        command = _shell_command(lang, env)
        _write(work / "script.sh", spec.content)
        return [*command, "script.sh"]
    if lang == "powershell":
        exe = _require(_powershell(env.get("PATH")), "pwsh or powershell")
        # A BOM makes Windows PowerShell 5 read the script as UTF-8 rather than ANSI.
        _write(work / "script.ps1", with_utf8_output(spec.content), encoding="utf-8-sig")
        flags = ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass"]
        return [exe, *flags, "-File", "script.ps1"]
    raise _LaunchError(f"unknown language {lang!r}; expected one of {', '.join(LANGUAGES)}")


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    # 0600 whatever the umask: the job's alone, like its directory. newline="" keeps LF
    # endings on Windows, where CRLF would break bash scripts.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    with open(os.open(path, flags, 0o600), "w", encoding=encoding, newline="") as f:
        f.write(text)
    return path


def _shell_command(lang: str, env: Mapping[str, str]) -> list[str]:
    if sys.platform != "win32":
        if lang == "bash":
            return [_require(find_bash(env, windows=False, exists=os.path.isfile), "bash")]
        return [_require(shutil.which("sh", path=env.get("PATH")), "sh")]
    bash = find_bash(env, windows=True, exists=os.path.isfile)
    if bash is None:
        raise _LaunchError(NO_BASH_ON_WINDOWS)
    if lang == "bash":
        return [bash]
    # Git for Windows' sh.exe is its bash in POSIX mode; asking bash for that mode is the same.
    sh = ntpath.join(ntpath.dirname(bash), "sh.exe")
    return [sh] if os.path.isfile(sh) else [bash, "--posix"]


def _require(exe: str | None, name: str) -> str:
    if exe is None:
        raise _LaunchError(f"interpreter not found on PATH: {name}")
    return exe


def _powershell(path: str | None = None) -> str | None:
    return shutil.which("pwsh", path=path) or shutil.which("powershell", path=path)


async def _spawn(
    argv: list[str], cwd: Path, env: dict[str, str], emit: Callable[[str, str], None],
    user: JobUser | None = None,
) -> tuple[asyncio.SubprocessTransport, _JobProtocol]:
    loop = asyncio.get_running_loop()
    # The child drops to the job's user (groups, then group, then user) before it execs.
    as_user: dict[str, Any] = {} if user is None else {
        "user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    try:
        return await loop.subprocess_exec(
            lambda: _JobProtocol(loop, emit),
            *argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Own session / process group, so the whole tree can be killed together. Windows:
            # suspended until it is in its Job Object (_contain), so that it starts nothing
            # outside it.
            start_new_session=sys.platform != "win32",
            creationflags=_CREATION_FLAGS | _SUSPENDED,
            **as_user,
        )
    except OSError as exc:
        if user is None:
            raise _LaunchError(f"cannot start {argv[0]}: {exc}") from exc
        # Popen blames the working directory for any failure before exec, setuid's included.
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EPERM:
            reason += " (the system did not let the agent switch to that user)"
        elif exc.filename:
            reason += f": {exc.filename}"
        raise _LaunchError(f"cannot start {argv[0]} as user {user.name!r}: {reason}") from exc


def _contain(pid: int) -> JobObject | None:
    """Windows: the Job Object of the job whose suspended process is `pid`, with it in and
    running (see winjob.py). None elsewhere: a POSIX job's session is its whole tree."""
    if sys.platform != "win32":
        return None
    try:
        job = JobObject()
    except JobObjectError as exc:
        raise _LaunchError(f"cannot make a Job Object for the job: {exc}") from exc
    try:
        job.adopt(pid)
    except JobObjectError as exc:
        job.close()
        raise _LaunchError(f"cannot put the job's process in its Job Object: {exc}") from exc
    return job


def _kill_tree(transport: asyncio.SubprocessTransport) -> None:
    # A job without a Job Object: POSIX (on Windows _contain allows none). Windows reuses
    # pids quickly, so there only a process we know is still ours would be touched.
    if sys.platform != "win32" or transport.get_returncode() is None:
        kill_tree(transport.get_pid())


# How to start a process whose whole tree kill_tree can end: its own session (POSIX) or
# process group (Windows, with its own hidden console, like a job's).
OWN_GROUP: dict[str, Any] = {"start_new_session": sys.platform != "win32",
                             "creationflags": _CREATION_FLAGS}


def kill_tree(pid: int) -> None:
    """Kill a process started with OWN_GROUP, and every process it started."""
    if sys.platform == "win32":
        _kill_tree_windows(pid)
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # group already empty (macOS reports EPERM when only zombies remain)


def _kill_tree_windows(pid: int) -> None:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        parent = psutil.Process(pid)
        victims = [*parent.children(recursive=True), parent]
    except psutil.Error:
        return
    for victim in victims:
        try:
            victim.kill()
        except psutil.Error:
            pass


def _last_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return None


def _exit_message(code: int | None, last_line: str | None) -> str:
    head = describe_exit(code, windows=sys.platform == "win32")
    return head if last_line is None else f"{head}: {last_line[:_MESSAGE_LINE_CHARS]}"


# Windows: a process that crashed ends with the NTSTATUS of the crash as its exit code.
NTSTATUS_NAMES = {
    0xC0000005: "access violation",
    0xC00000FD: "stack overflow",
    0xC000013A: "terminated by Ctrl+C",
    0xC0000409: "stack buffer overrun",
    0xC0000135: "DLL not found",
    0xC0000142: "DLL initialization failed",
}


def describe_exit(code: int | None, *, windows: bool) -> str:
    """How a job's process ended, for its error message: killed by a signal (POSIX), a crash
    as its NTSTATUS in hex (Windows: 3221225477 is 0xC0000005), else its exit code."""
    if code is not None and code < 0 and not windows:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code is not None and windows and code >= 0xC0000000:
        name = NTSTATUS_NAMES.get(code)
        return f"exit code {code:#010X}".replace("0X", "0x") + (f" ({name})" if name else "")
    return f"exit code {code}"


def _collect_result(result_file: Path, tail: str, user: JobUser | None = None) -> Outcome:
    try:
        data = _read_result_file(result_file, user)
    except FileNotFoundError:
        data = b""
    except OSError as exc:
        return _failed(ErrorKind.SCRIPT_ERROR, f"cannot read result file: {exc}")
    if data.strip():
        try:
            return Outcome("succeeded", result=json.loads(data))
        except ValueError as exc:
            return _failed(ErrorKind.SCRIPT_ERROR, f"result file is not valid JSON: {exc}")
    line = _last_line(tail)
    if line is None:
        return Outcome("succeeded")
    try:
        return Outcome("succeeded", result=json.loads(line))
    except ValueError:
        return Outcome("succeeded", result=line)


def sendable(outcome: Outcome) -> tuple[Outcome, bool]:
    """The outcome to report, and whether a failure may be retried.

    Text no database can hold (NUL, lone surrogates) is replaced as in logs (storable.py).
    A result that is still not strict JSON (NaN or Infinity, which Python's json accepts)
    can be stored nowhere: the attempt fails with that reason, and since the job would
    return it again, it is not retried."""
    outcome = replace(outcome, result=storable_json(outcome.result),
                      error=storable_json(outcome.error))
    try:
        json.dumps(outcome.result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        message = f"the job's result cannot be stored as JSON: {exc}"
        return _failed(ErrorKind.INTERNAL, message), False
    return outcome, True


def _read_result_file(path: Path, user: JobUser | None) -> bytes:
    """The job wrote this file, so it decides what is there: never follow a link out of the
    job's directory, never block on a pipe, never read a file of someone else's that the job
    hard-linked in (the agent may be root and read what the job cannot)."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # Windows: no newline translation
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(f"{path.name} is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if user is not None and info.st_uid != user.uid:
            raise OSError(f"{path.name} does not belong to the job's user {user.name!r}")
        return f.read()


def python_wrapper_main(argv: Sequence[str]) -> int:
    """Run the Python job wrapper in this process (for a frozen agent re-executing itself).

    argv is what follows the interpreter: [wrapper_path, script_path] or just [script_path];
    only the last entry is used, since the wrapper's logic is the text executed here.
    """
    namespace: dict[str, Any] = {"__name__": "_tagrun_wrapper"}
    exec(compile(_WRAPPER_SOURCE, _WRAPPER_NAME, "exec"), namespace)
    entry: Callable[[list[str]], int] = namespace["tagrun_wrapper"]
    return entry(list(argv))


def available_languages() -> list[str]:
    if _powershell() is None:
        return [lang for lang in LANGUAGES if lang != "powershell"]
    return list(LANGUAGES)
