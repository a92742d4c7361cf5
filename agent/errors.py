"""Agent errors.

AgentError                  root; `exit_code` is what the agent process exits with
 ├── ConfigError            a setting is wrong; names the variable (exit 1)
 ├── InitScriptFailed       INIT_SCRIPT did not succeed; carries its output (exit 1)
 ├── TokenRefused           401: the token is revoked, expired or not valid here (exit 3)
 ├── VersionRefused         426: this agent's version is below the server's minimum (exit 4)
 ├── ServerUntrusted        the server's TLS certificate fails verification (exit 1)
 ├── ServerAnswer           the server answered with an error it meant (4xx): not retried
 └── GaveUp                 a bounded retry ran out; the job is left to lease expiry

Transport failures (connection errors, timeouts, 5xx, 408, 429) never leave the client as
such: they are retried, forever for claim and heartbeat, until GaveUp for the rest.
TokenRefused and GaveUp are also the lease holder's Fatal and OutOfReach (shared/holder.py).
"""

from __future__ import annotations

from tagrun.shared.holder import Fatal, OutOfReach


class AgentError(Exception):
    exit_code = 1


class ConfigError(AgentError):
    """A setting is wrong; the message names the variable (and its value, unless secret)."""


class InitScriptFailed(AgentError):
    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


class TokenRefused(AgentError, Fatal):
    exit_code = 3

    def __init__(self, message: str = "the server refused the agent token") -> None:
        super().__init__(message)


class VersionRefused(AgentError):
    """The server refuses claims from this agent's version: it finishes its running jobs,
    says goodbye and exits 4, so that a service manager does not start it again in a loop
    (configure it not to restart on 4, as for 3)."""

    exit_code = 4


class ServerUntrusted(AgentError):
    """Not retried: a certificate the agent does not trust now it will not trust later."""


# The server refuses these for what was sent: the same request would be refused again.
REFUSED_FOR_WHAT_WAS_SENT = (400, 413, 422)


class ServerAnswer(AgentError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"server answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def lease_lost(self) -> bool:
        return self.status == 409 and self.code == "lease_lost"


class GaveUp(AgentError, OutOfReach):
    """The server stayed unreachable for longer than the call's retry bound."""
