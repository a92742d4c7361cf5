"""Windows: a Job Object per job, so that every process a job starts ends with it.

The job's process is created suspended (CREATE_SUSPENDED), put in a Job Object of its own,
then resumed: it cannot start anything before it is in the job, and whatever it starts later
is in the job too (children inherit their parent's job; the job does not allow breakaway).
Ending the job (TerminateJobObject) ends them all, the background grandchild that outlived
its parent included. The job is JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, and its handle is the
agent's alone (not inheritable): when the agent dies, however it dies, Windows closes the
handle and kills what is left. An agent already running in a job (a service wrapper's, a CI
runner's) gets nested jobs, which Windows supports since 8 and Server 2012.

The structures are defined on every platform (their layout is checked by tests on Linux);
the calls exist on Windows only.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

__all__ = ["CREATE_SUSPENDED", "JobObject", "JobObjectError"]

CREATE_SUSPENDED = 0x00000004
_JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9
_PROCESS_TERMINATE = 0x0001
_PROCESS_SET_QUOTA = 0x0100
_PROCESS_SUSPEND_RESUME = 0x0800

# Windows' DWORD is 32 bits on every Windows; ctypes.wintypes.DWORD is c_ulong, 64 bits on
# Linux, which would make the layout checked there differ from the one used on Windows.
_DWORD = ctypes.c_uint32
_ULONG_PTR = ctypes.c_size_t


class IoCounters(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
        "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]


class BasicLimitInformation(ctypes.Structure):
    """JOBOBJECT_BASIC_LIMIT_INFORMATION."""

    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", _DWORD),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", _DWORD),
        ("Affinity", _ULONG_PTR),
        ("PriorityClass", _DWORD),
        ("SchedulingClass", _DWORD),
    ]


class ExtendedLimitInformation(ctypes.Structure):
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION (144 bytes on 64-bit Windows)."""

    _fields_ = [
        ("BasicLimitInformation", BasicLimitInformation),
        ("IoInfo", IoCounters),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


def kill_on_close_limits() -> ExtendedLimitInformation:
    info = ExtendedLimitInformation()
    info.BasicLimitInformation.LimitFlags = _JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    return info


class JobObjectError(OSError):
    """A Job Object could not be made, or a process not put in it, or not resumed."""


class JobObject:
    """One job's Job Object: `adopt` its suspended process, `terminate` all it holds, and
    `close` (which kills whatever is still in it)."""

    def __init__(self) -> None:
        self._handle: int | None = _create()

    def adopt(self, pid: int) -> None:
        """Put the suspended process `pid` in this job, then let it run. Our Popen still
        holds its handle, so the pid cannot have been reused meanwhile. Raises if either
        fails: the process is then still suspended, for the caller to kill."""
        if sys.platform != "win32":
            raise JobObjectError("Job Objects exist on Windows only")
        if self._handle is None:
            raise JobObjectError("the Job Object is closed")
        access = _PROCESS_SET_QUOTA | _PROCESS_TERMINATE | _PROCESS_SUSPEND_RESUME
        process = _kernel32.OpenProcess(access, False, pid)
        if not process:
            raise _last_error(f"OpenProcess({pid})")
        try:
            if not _kernel32.AssignProcessToJobObject(self._handle, process):
                raise _last_error(f"AssignProcessToJobObject({pid})")
            status = _ntdll.NtResumeProcess(process)
            if status != 0:
                raise JobObjectError(f"NtResumeProcess({pid}) failed: NTSTATUS "
                                     f"{status & 0xFFFFFFFF:#010x}")
        finally:
            _kernel32.CloseHandle(process)

    def terminate(self, exit_code: int = 1) -> None:
        """End every process in the job (none left is fine)."""
        if sys.platform != "win32":
            return
        if self._handle is not None:
            _kernel32.TerminateJobObject(self._handle, exit_code)

    def close(self) -> None:
        if sys.platform != "win32":
            return
        if self._handle is not None:
            _kernel32.CloseHandle(self._handle)
            self._handle = None


def _create() -> int:
    if sys.platform != "win32":
        raise JobObjectError("Job Objects exist on Windows only")
    handle = _kernel32.CreateJobObjectW(None, None)
    if not handle:
        raise _last_error("CreateJobObjectW")
    info = kill_on_close_limits()
    if not _kernel32.SetInformationJobObject(handle, _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
                                             ctypes.byref(info), ctypes.sizeof(info)):
        error = _last_error("SetInformationJobObject")
        _kernel32.CloseHandle(handle)
        raise error
    return int(handle)


if sys.platform == "win32":
    from ctypes import wintypes

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _ntdll = ctypes.WinDLL("ntdll")
    _kernel32.CreateJobObjectW.argtypes = (ctypes.c_void_p, wintypes.LPCWSTR)
    _kernel32.CreateJobObjectW.restype = wintypes.HANDLE
    _kernel32.SetInformationJobObject.argtypes = (wintypes.HANDLE, ctypes.c_int,
                                                  ctypes.c_void_p, _DWORD)
    _kernel32.SetInformationJobObject.restype = wintypes.BOOL
    _kernel32.OpenProcess.argtypes = (_DWORD, wintypes.BOOL, _DWORD)
    _kernel32.OpenProcess.restype = wintypes.HANDLE
    _kernel32.AssignProcessToJobObject.argtypes = (wintypes.HANDLE, wintypes.HANDLE)
    _kernel32.AssignProcessToJobObject.restype = wintypes.BOOL
    _kernel32.TerminateJobObject.argtypes = (wintypes.HANDLE, ctypes.c_uint)
    _kernel32.TerminateJobObject.restype = wintypes.BOOL
    _kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    _kernel32.CloseHandle.restype = wintypes.BOOL
    # Undocumented but stable since Windows XP (psutil's Process.resume() calls it too): Popen
    # closes the main thread's handle, so the process is resumed by its process handle.
    _ntdll.NtResumeProcess.argtypes = (wintypes.HANDLE,)
    _ntdll.NtResumeProcess.restype = ctypes.c_long

    def _last_error(call: str) -> JobObjectError:
        code = ctypes.get_last_error()
        return JobObjectError(code, f"{call} failed: {ctypes.FormatError(code).strip()}")
else:
    _kernel32: Any = None  # never called: every caller checks the platform first
    _ntdll: Any = None

    def _last_error(call: str) -> JobObjectError:
        return JobObjectError(f"{call}: Job Objects exist on Windows only")
