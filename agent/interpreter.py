"""The agent executable as the Python interpreter its Python jobs run on.

In the frozen executable `sys.executable` is the agent itself, so whatever a Python job
starts with it (`subprocess.run([sys.executable, "-c", ...])`, `-m json.tool`, a script,
multiprocessing's workers and helpers) starts the agent again. The agent's own options are all
long (`--name`), so a command line that starts otherwise is Python's, and run_interpreter()
runs it as `python` would: -c, -m, a script or `-`, -u, -W and -X, on the bundled standard
library. Flags that change nothing in a frozen interpreter (-B, -S, -O, -s, ...) are accepted.

become_python() gives every such process, and the Python job itself, what a frozen interpreter
leaves out: exit() and quit(); stdio as PYTHONUNBUFFERED and PYTHONIOENCODING ask (it ignores
its environment); zoneinfo's data (the tzdata package, bundled as one zip); and the operating
system's trust store for `ssl` (the bundled OpenSSL would look for CA files where the build
machine keeps them).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Sequence
from types import TracebackType

# scripts/build-agent bundles the tzdata package so, rather than as 600 small files.
_TZDATA_ZIP = "tzdata.zip"
# Python's one-letter options; these take a value, attached (-c'...') or as the next argument.
_WITH_VALUE = frozenset("cmWX")
_FLAGS = frozenset("bBdEhiIOPqRsSuvVx")
_USAGE = "usage: {prog} [option] ... [-c cmd | -m mod | file | -] [arg] ..."


class _UsageError(Exception):
    pass


def become_python() -> None:
    """First thing a frozen Python process does, whatever it runs."""
    import site

    site.setquit()  # exit() and quit(), which a frozen interpreter (no site) lacks
    configure_stdio(unbuffered=False)
    tzdata = os.path.join(getattr(sys, "_MEIPASS", ""), _TZDATA_ZIP)
    if os.path.isfile(tzdata):
        sys.path.append(tzdata)
    _trust_the_system()


def configure_stdio(unbuffered: bool) -> None:
    """What -u (`unbuffered`), PYTHONUNBUFFERED and PYTHONIOENCODING do to an interpreter's
    stdio. The executor sets both variables for Python jobs: without this a job's output would
    arrive in 8 KiB blocks (or at exit) and, on Windows, in the ANSI code page."""
    encoding, _, errors = os.environ.get("PYTHONIOENCODING", "").partition(":")
    unbuffered = unbuffered or bool(os.environ.get("PYTHONUNBUFFERED"))
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, io.TextIOWrapper):
            continue
        chosen = encoding or stream.encoding
        handling = "backslashreplace" if name == "stderr" else errors or stream.errors
        if not unbuffered:
            stream.reconfigure(encoding=chosen, errors=handling)
            continue
        stream.flush()
        raw = io.FileIO(stream.fileno(), "w", closefd=False)
        newline = None if sys.platform == "win32" else "\n"  # as the interpreter's own stdio
        setattr(sys, name, io.TextIOWrapper(raw, encoding=chosen, errors=handling,
                                            newline=newline, write_through=True))
    if encoding and isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(encoding=encoding, errors=errors or sys.stdin.errors)


def _trust_the_system() -> None:
    """`ssl` verifies with the operating system's trust store (as pip does), and on Linux
    finds the distribution's CA bundle wherever it is; SSL_CERT_FILE still works there."""
    try:
        import truststore
    except ImportError:  # not bundled, or a platform it does not support: OpenSSL's defaults
        return
    truststore.inject_into_ssl()


def run_interpreter(args: Sequence[str]) -> int:
    """Run Python's command line `args` (without the program name) in this process."""
    prog = os.path.basename(sys.executable)
    try:
        flags, values, target, rest = _parse(args)
    except _UsageError as exc:
        print(f"{exc}\n{_USAGE.format(prog=prog)}", file=sys.stderr)
        return 2
    if "V" in flags:
        print(f"Python {sys.version.split()[0]}")
        return 0
    if "h" in flags:
        print(_USAGE.format(prog=prog))
        return 0
    if "u" in flags:
        configure_stdio(unbuffered=True)
    _apply_options(values)
    kind, value = target
    _set_path(kind, value, flags)
    if kind == "m":
        return _run_module(value, rest, prog)
    if kind == "file":
        return _run_file(value, rest, prog)
    source = value if kind == "c" else sys.stdin.read()
    sys.argv = ["-c" if kind == "c" else "-", *rest]
    return _guarded(lambda: _run_source(source, "<string>" if kind == "c" else "<stdin>"))


def _parse(args: Sequence[str]
           ) -> tuple[set[str], list[tuple[str, str]], tuple[str, str], list[str]]:
    """(flags, -W/-X values, (kind, value) of what to run, its arguments); kind is c, m,
    file or - (stdin, also when nothing is named, as for a `python` whose stdin is no tty)."""
    flags: set[str] = set()
    values: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return (flags, values, ("file", args[i + 1]), list(args[i + 2:])) \
                if i + 1 < len(args) else (flags, values, ("-", ""), [])
        if arg == "-" or not arg.startswith("-"):
            return flags, values, ("-", "") if arg == "-" else ("file", arg), list(args[i + 1:])
        for j, letter in enumerate(arg[1:], start=1):
            if letter in _WITH_VALUE:
                value = arg[j + 1:]
                if not value:
                    i += 1
                    if i == len(args):
                        raise _UsageError(f"Argument expected for the -{letter} option")
                    value = args[i]
                if letter in "cm":
                    return flags, values, (letter, value), list(args[i + 1:])
                values.append((letter, value))
                break
            if letter not in _FLAGS:
                raise _UsageError(f"Unknown option: -{letter}")
            flags.add(letter)
        i += 1
    return flags, values, ("-", ""), []


def _apply_options(values: list[tuple[str, str]]) -> None:
    for letter, value in values:
        if letter == "W":
            sys.warnoptions.append(value)
        else:
            key, has_value, setting = value.partition("=")
            sys._xoptions[key] = setting if has_value else True
    if any(letter == "W" for letter, _ in values):
        import warnings

        process = getattr(warnings, "_processoptions", None)  # what the interpreter calls
        if process is not None:
            process([v for letter, v in values if letter == "W"])


def _set_path(kind: str, value: str, flags: set[str]) -> None:
    """sys.path as `python` makes it: the script's directory (the current one for -c, -m and
    stdin) first, unless -I or -P, then PYTHONPATH, unless -I or -E."""
    first: list[str] = []
    if not flags & {"I", "P"}:
        if kind == "file":
            first.append(os.path.dirname(os.path.abspath(value)))
        else:
            first.append(os.getcwd() if kind == "m" else "")
    if not flags & {"I", "E"}:
        first += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = first


def _run_source(source: str, filename: str) -> None:
    import types

    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    exec(compile(source, filename, "exec"), main.__dict__)


def _run_module(name: str, rest: list[str], prog: str) -> int:
    import importlib.util
    import runpy

    try:
        found = importlib.util.find_spec(name) is not None
    except ImportError:
        found = False
    if not found:
        print(f"{prog}: No module named {name}", file=sys.stderr)
        return 1
    sys.argv = [name, *rest]  # runpy puts the module's file first, as `python -m` does
    return _guarded(lambda: runpy.run_module(name, run_name="__main__", alter_sys=True))


def _run_file(path: str, rest: list[str], prog: str) -> int:
    import runpy

    if not os.path.exists(path):
        print(f"{prog}: can't open file {os.path.abspath(path)!r}: "
              "[Errno 2] No such file or directory", file=sys.stderr)
        return 2
    sys.argv = [path, *rest]
    return _guarded(lambda: runpy.run_path(path, run_name="__main__"))


def _guarded(run: Callable[[], object]) -> int:
    """Run it; an exception is printed as `python` prints it (from the job's own frames on)
    and exits 1. SystemExit goes through: the process exits with its code."""
    try:
        run()
    except SystemExit:
        raise
    except BaseException as exc:
        sys.stdout.flush()
        tb = _from_the_job_on(exc.__traceback__)
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return 1
    return 0


def _from_the_job_on(tb: TracebackType | None) -> TracebackType | None:
    ours = {__name__, "runpy"}
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in ours:
        tb = tb.tb_next
    return tb
