from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from tagrun.shared.executors import (
    LANGUAGES,
    ErrorKind,
    ExecSpec,
    Execution,
    JobUser,
    Outcome,
    available_languages,
    python_wrapper_main,
)

HAS_POWERSHELL = bool(shutil.which("pwsh") or shutil.which("powershell"))
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="uses POSIX shell features")


def make_spec(tmp_path: Path, language: str, content: str, **kw: Any) -> ExecSpec:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    kw.setdefault("args", {})
    kw.setdefault("timeout_s", 20.0)
    return ExecSpec(language=language, content=content, work_dir=work, **kw)


def execute(tmp_path: Path, language: str, content: str, **kw: Any) -> tuple[Outcome, str]:
    chunks: list[str] = []
    spec = make_spec(tmp_path, language, content, **kw)
    outcome = asyncio.run(Execution(spec, chunks.append).run())
    return outcome, "".join(chunks)


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # An orphan may linger as a zombie until init reaps it; it is dead all the same.
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, deadline_s: float = 5.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.02)
    return is_gone(pid)


def test_identity_returns_args_without_output(tmp_path: Path) -> None:
    outcome, output = execute(tmp_path, "identity", "ignored", args={"x": [1, 2]})
    assert outcome == Outcome("succeeded", result={"x": [1, 2]})
    assert output == ""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("""echo noise; echo '{"a": 1}'""", {"a": 1}),
        ("echo first; echo '  hello world  '; echo; echo", "hello world"),
        ("echo oops >&2", "oops"),
        ("true", None),
    ],
    ids=["json-last-line", "plain-string", "stderr-counts", "no-output"],
)
def test_bash_result_from_last_line(tmp_path: Path, content: str, expected: Any) -> None:
    outcome, _ = execute(tmp_path, "bash", content)
    assert outcome == Outcome("succeeded", result=expected)


def test_result_file_wins_over_last_line(tmp_path: Path) -> None:
    script = """echo '{"from": "file"}' > "$TAGRUN_RESULT_FILE"; echo '{"from": "stdout"}'"""
    outcome, _ = execute(tmp_path, "bash", script)
    assert outcome.result == {"from": "file"}


def test_invalid_result_file_fails(tmp_path: Path) -> None:
    outcome, _ = execute(tmp_path, "bash", 'echo "not json" > "$TAGRUN_RESULT_FILE"')
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error["kind"] == ErrorKind.SCRIPT_ERROR
    assert "not valid JSON" in outcome.error["message"]


@posix_only
def test_a_result_file_that_is_a_link_is_refused_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "not-the-jobs.json"
    secret.write_text('{"secret": "of the agent"}')
    outcome, _ = execute(tmp_path, "bash", f'ln -s {secret} "$TAGRUN_RESULT_FILE"')
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error["message"] == \
        "cannot read result file: _tagrun_result.json is a symbolic link"
    assert outcome.result is None


@posix_only
def test_a_result_file_that_is_a_pipe_fails_the_job_without_blocking(tmp_path: Path) -> None:
    outcome, _ = execute(tmp_path, "bash", 'mkfifo "$TAGRUN_RESULT_FILE"')
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error["message"] == \
        "cannot read result file: _tagrun_result.json is not a regular file"


@pytest.fixture
def job_user(tmp_path: Path) -> Iterator[JobUser]:
    """The unprivileged user jobs run as (AGENT_JOB_USER); created when the suite runs as
    root, which switching users needs. Its jobs run under tmp_path, made reachable to it."""
    if sys.platform == "win32" or os.geteuid() != 0:
        pytest.skip("running a job as another user needs a POSIX system and root")
    import pwd

    from tests.support.users import traversable, unprivileged_user

    entry = pwd.getpwnam(unprivileged_user("tagrun-test-job") or "")
    with traversable(tmp_path / "work"):
        yield JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid, (), entry.pw_dir)


def test_a_job_user_owns_its_directory_and_nothing_else(
    tmp_path: Path, job_user: JobUser
) -> None:
    user = job_user
    script = ('echo "$(id -u) $(id -g) $(id -G) $HOME $USER"; stat -c "%u %a" . script.sh; '
              'cat /proc/$PPID/environ > /dev/null 2>&1 || echo "agent environ: denied"; '
              'echo \'{"done": true}\' > "$TAGRUN_RESULT_FILE"')
    outcome, output = execute(tmp_path, "bash", script, user=user)
    assert outcome.status == "succeeded" and outcome.result == {"done": True}, output
    lines = output.splitlines()
    home = user.home if os.path.isdir(user.home) else str(tmp_path / "work")
    assert lines[0] == f"{user.uid} {user.gid} {user.gid} {home} {user.name}"
    assert lines[1:3] == [f"{user.uid} 700", f"{user.uid} 600"]
    assert lines[3] == "agent environ: denied"


def test_a_job_user_cannot_pass_off_someone_elses_file_as_its_result(
    tmp_path: Path, job_user: JobUser
) -> None:
    """A hard link to a file the job cannot read (possible where links are not protected,
    as on macOS) must not make the agent read it on the job's behalf."""
    user = job_user
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": "of root"}')
    secret.chmod(0o600)
    work = tmp_path / "work"
    linked = asyncio.Event()

    async def run() -> Outcome:
        spec = make_spec(tmp_path, "bash", "until [ -e linked ]; do sleep 0.02; done",
                         user=user)
        task = asyncio.create_task(Execution(spec, lambda text: None).run())
        while (work.stat().st_uid != user.uid) and not task.done():
            await asyncio.sleep(0.02)  # handed over to the job's user: the job is starting
        os.link(secret, work / "_tagrun_result.json")
        (work / "linked").touch()
        linked.set()
        return await task

    outcome = asyncio.run(run())
    assert linked.is_set()
    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error["message"] == ("cannot read result file: _tagrun_result.json does "
                                        f"not belong to the job's user {user.name!r}")


def test_bash_reads_args_file(tmp_path: Path) -> None:
    args = {"name": "héllo", "n": 3}
    outcome, _ = execute(tmp_path, "bash", 'cat "$TAGRUN_ARGS_FILE"', args=args)
    assert outcome.result == args


def test_runs_in_work_dir_with_extra_env(tmp_path: Path) -> None:
    outcome, output = execute(tmp_path, "bash", 'pwd; echo "$GREETING"', env={"GREETING": "hi"})
    assert outcome.result == "hi"
    assert Path(output.splitlines()[0]).resolve() == (tmp_path / "work").resolve()


def test_sh_works(tmp_path: Path) -> None:
    outcome, _ = execute(tmp_path, "sh", "x=41; echo $((x + 1))")
    assert outcome == Outcome("succeeded", result=42)


def test_nonzero_exit_fails_with_code_and_last_line(tmp_path: Path) -> None:
    outcome, output = execute(tmp_path, "bash", "echo working; echo 'bad input' >&2; exit 3")
    assert outcome.status == "failed"
    assert outcome.error == {"kind": ErrorKind.SCRIPT_ERROR, "message": "exit code 3: bad input"}
    assert "working" in output


def test_python_main_called_with_args(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "helper.py").write_text("OFFSET = 100\n")
    script = (
        "from helper import OFFSET\n"
        "def main(x, y):\n"
        "    print('adding')\n"
        "    return {'sum': x + y + OFFSET}\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('the __main__ block must not run')\n"
    )
    outcome, output = execute(tmp_path, "python", script, args={"x": 1, "y": 2})
    assert outcome == Outcome("succeeded", result={"sum": 103})
    assert "adding" in output


def test_python_without_main_uses_last_line(tmp_path: Path) -> None:
    outcome, _ = execute(tmp_path, "python", "print('starting')\nprint([1, 2])\n")
    assert outcome == Outcome("succeeded", result=[1, 2])


def test_python_exception_fails_with_traceback(tmp_path: Path) -> None:
    script = "def main():\n    raise ValueError('boom')\n"
    outcome, output = execute(tmp_path, "python", script)
    assert outcome.status == "failed"
    assert outcome.error == {
        "kind": ErrorKind.SCRIPT_ERROR,
        "message": "exit code 1: ValueError: boom",
    }
    assert "Traceback (most recent call last)" in output
    assert "main.py" in output


def test_missing_python_interpreter_is_internal_error(tmp_path: Path) -> None:
    outcome, _ = execute(tmp_path, "python", "print(1)", python_cmd=["/nonexistent/python"])
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error["kind"] == ErrorKind.INTERNAL
    assert "/nonexistent/python" in outcome.error["message"]


@posix_only
def test_timeout_kills_process_tree(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = f'sleep 1000 & echo $! > "{pid_file}"; wait'
    started = time.monotonic()
    outcome, _ = execute(tmp_path, "bash", script, timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert outcome.error == {"kind": ErrorKind.TIMEOUT, "message": "timed out after 0.5 s"}
    assert wait_gone(int(pid_file.read_text()))


@posix_only
def test_cancel_kills_process_tree(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = f'sleep 1000 & echo $! > "{pid_file}"; echo started; wait'
    spec = make_spec(tmp_path, "bash", script, timeout_s=None)

    async def scenario() -> tuple[Outcome, float]:
        started = asyncio.Event()
        execution = Execution(spec, lambda text: started.set() if "started" in text else None)
        task = asyncio.create_task(execution.run())
        await asyncio.wait_for(started.wait(), 10)
        t0 = time.monotonic()
        execution.cancel()
        execution.cancel()  # idempotent
        outcome = await task
        return outcome, time.monotonic() - t0

    outcome, elapsed = asyncio.run(scenario())
    assert outcome.status == "cancelled"
    assert outcome.error is not None and outcome.error["kind"] == ErrorKind.CANCELLED
    assert elapsed < 3
    assert wait_gone(int(pid_file.read_text()))


@posix_only
def test_cancelling_the_run_task_kills_process_tree(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = f'sleep 1000 & echo $! > "{pid_file}"; echo started; wait'
    spec = make_spec(tmp_path, "bash", script, timeout_s=None)

    async def scenario() -> None:
        started = asyncio.Event()
        execution = Execution(spec, lambda text: started.set() if "started" in text else None)
        task = asyncio.create_task(execution.run())
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert wait_gone(int(pid_file.read_text()))


def test_cancel_before_run_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    execution = Execution(make_spec(tmp_path, "bash", f'touch "{marker}"'), print)
    execution.cancel()
    outcome = asyncio.run(execution.run())
    assert outcome.status == "cancelled"
    assert not marker.exists()


@posix_only
def test_leftover_background_child_does_not_hold_up_finished_job(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = f'sleep 1000 & echo $! > "{pid_file}"; echo done'
    started = time.monotonic()
    outcome, _ = execute(tmp_path, "bash", script, timeout_s=30.0)
    assert outcome == Outcome("succeeded", result="done")
    assert time.monotonic() - started < 5
    assert wait_gone(int(pid_file.read_text()))


STREAM_SCRIPTS = {
    # Neither prints a newline before blocking: streaming must not wait for one.
    "bash": 'printf ready; while [ ! -e "$GATE" ]; do sleep 0.02; done; echo; echo done',
    "python": (
        "import os, time\n"
        "print('ready', end='')\n"
        "while not os.path.exists(os.environ['GATE']):\n"
        "    time.sleep(0.02)\n"
        "print()\nprint('done')\n"
    ),
}


@pytest.mark.parametrize("language", sorted(STREAM_SCRIPTS))
def test_output_streams_before_exit(tmp_path: Path, language: str) -> None:
    # The job only finishes once the gate exists, and the gate is created only after
    # "ready" reached on_output; buffered output would end in a timeout instead.
    gate = tmp_path / "gate"
    spec = make_spec(
        tmp_path, language, STREAM_SCRIPTS[language], timeout_s=5.0, env={"GATE": str(gate)}
    )
    seen: list[str] = []

    def on_output(text: str) -> None:
        seen.append(text)
        gate.touch()

    outcome = asyncio.run(Execution(spec, on_output).run())
    assert outcome == Outcome("succeeded", result="done")
    assert seen[0].startswith("ready")


def test_non_ascii_output_intact(tmp_path: Path) -> None:
    outcome, output = execute(tmp_path, "bash", "echo 'héllo ✓'")
    assert outcome.result == "héllo ✓"
    assert output == "héllo ✓\n"


def test_multibyte_characters_never_split_across_reads(tmp_path: Path) -> None:
    # 3-byte characters over several 64 KiB reads force chunk boundaries mid-character.
    script = "import sys\nsys.stdout.write('✓' * 100000 + '\\n')\n"
    outcome, output = execute(tmp_path, "python", script)
    assert outcome.status == "succeeded"
    assert output == "✓" * 100000 + "\n"


@pytest.mark.skipif(not HAS_POWERSHELL, reason="neither pwsh nor powershell is on PATH")
def test_powershell_result(tmp_path: Path) -> None:
    script = "$a = Get-Content -Raw $env:TAGRUN_ARGS_FILE | ConvertFrom-Json\nWrite-Output $a.n"
    outcome, _ = execute(tmp_path, "powershell", script, args={"n": 7})
    assert outcome == Outcome("succeeded", result=7)


def test_available_languages() -> None:
    languages = available_languages()
    assert {"bash", "sh", "python", "identity"} <= set(languages) <= set(LANGUAGES)
    assert ("powershell" in languages) == HAS_POWERSHELL


def test_python_wrapper_main_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "main.py"
    script.write_text("def main(word):\n    return word.upper()\n")
    result_file = tmp_path / "result.json"
    args_file = tmp_path / "args.json"
    args_file.write_text('{"word": "hi"}')
    monkeypatch.setenv("TAGRUN_ARGS_FILE", str(args_file))
    monkeypatch.setenv("TAGRUN_RESULT_FILE", str(result_file))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert python_wrapper_main(["_tagrun_wrapper.py", str(script)]) == 0
    assert result_file.read_text() == '"HI"'
    script.write_text("def main(word):\n    raise SystemExit(4)\n")
    assert python_wrapper_main([str(script)]) == 4


@posix_only
def test_stdout_and_stderr_arrive_apart_each_with_its_stream(tmp_path: Path) -> None:
    # Each line waits for the one before it to have been read, so their order is known;
    # a 3-byte character split across stderr's writes still arrives whole.
    gate = tmp_path / "gate"
    script = ('wait_for() { while [ ! -e "$GATE.$1" ]; do sleep 0.01; done; }\n'
              'echo out-1\nwait_for 1\n'
              'printf "err-\\342\\234" >&2; sleep 0.05; printf "\\223\\n" >&2\n'
              'wait_for 2\nprintf "out-2 no newline"\n')
    spec = make_spec(tmp_path, "bash", script, env={"GATE": str(gate)})
    seen: list[tuple[str, str]] = []

    def on_stream(text: str, stream: str) -> None:
        seen.append((stream, text))
        joined = "".join(t for _, t in seen)
        if "out-1\n" in joined:
            gate.with_suffix(".1").touch()
        if "err-✓\n" in joined:
            gate.with_suffix(".2").touch()

    outcome = asyncio.run(Execution(spec, on_stream=on_stream).run())
    assert outcome.status == "succeeded"
    merged: list[tuple[str, str]] = []
    for stream, text in seen:  # several reads of one stream in a row make one piece here
        if merged and merged[-1][0] == stream:
            merged[-1] = (stream, merged[-1][1] + text)
        else:
            merged.append((stream, text))
    assert merged == [("stdout", "out-1\n"), ("stderr", "err-✓\n"),
                      ("stdout", "out-2 no newline")]
    assert outcome.result == "out-2 no newline"  # the last line, whichever stream


def test_when_both_streams_end_together_a_failure_tells_stderr_and_a_result_stdout(
    tmp_path: Path
) -> None:
    # Two pipes read in one moment cannot say which was written first (a loaded event loop
    # may read a Python job's traceback before the line it printed just before raising):
    # the failure's message is then stderr's last line, the result stdout's.
    execution = Execution(make_spec(tmp_path, "bash", "true"))
    execution._emit("Traceback …\nValueError: boom\n", "stderr")
    execution._emit("done step 1\n", "stdout")
    failed = execution._outcome(1, timed_out=False)
    assert failed.error == {"kind": ErrorKind.SCRIPT_ERROR,
                            "message": "exit code 1: ValueError: boom"}
    assert execution._outcome(0, timed_out=False) == Outcome("succeeded", result="done step 1")


def test_a_python_failure_names_its_exception_after_its_output(tmp_path: Path) -> None:
    outcome, output = execute(tmp_path, "python", (
        "def main():\n    print('done step 1', flush=True)\n    raise ValueError('boom')\n"))
    assert outcome.error is not None and outcome.error["message"].endswith("ValueError: boom")
    assert "done step 1\n" in output
