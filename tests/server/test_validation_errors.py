"""A refused body is explained in plain words, naming the field by its path in the body."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from tagrun.server.models import BatchIn, JobIn, ScriptIn, WorkspaceIn, WorkspaceTokenIn
from tagrun.server.services.schedules import ScheduleIn
from tagrun.server.validation_errors import plain_message
from tagrun.shared.agent_wire import AgentTokenIn

CASES: list[tuple[type, Any, str]] = [
    (AgentTokenIn, {"group": "g", "tags": ["a"], "expires_in_s": 30},
     "expires_in_s must be at least 60"),
    (AgentTokenIn, {"group": "g", "tags": []}, "tags must have at least 1 item"),
    (AgentTokenIn, {"tags": ["a"]}, "missing required field group"),
    (AgentTokenIn, {"group": "g", "tags": "a"}, "tags must be a list, not a string"),
    (AgentTokenIn, {"group": "g", "tags": ["a"], "expires_in_s": "1d"},
     "expires_in_s must be an integer, not a string"),
    (AgentTokenIn, {"group": "a b", "tags": ["a"]},
     "group must match the pattern [A-Za-z0-9][A-Za-z0-9_.-]{0,62}"),
    (WorkspaceTokenIn, {"workspace": "default", "expires_in_s": 0},
     "expires_in_s must be at least 1"),
    (WorkspaceIn, {"id": "Not Valid"},
     "id must be 1 to 63 lowercase letters, digits and '-', starting with a letter or a digit"),
    (WorkspaceIn, {"id": "x", "surprise": 1}, "unknown field surprise"),
    (WorkspaceIn, [], "the request body must be a JSON object, not a list"),
    (JobIn, {"priority": 5000}, "priority must be at most 1000"),
    (JobIn, {"timeout_s": 0}, "timeout_s must be greater than 0"),
    (JobIn, {"tag": ""}, "tag must not be empty"),
    (ScriptIn, {"path": "f/x", "language": "bash", "content": "", "max_attempts": None},
     "max_attempts must be an integer, not null"),
    (JobIn, {"script": "F/X"}, "script must be a path like f/etl/daily: parts of lowercase "
                               "letters, digits, '_', '.' and '-', joined by '/'"),
    (JobIn, {"secrets": ["db password"]}, "secrets[0] must be a name like DB_PASSWORD: up to "
                                          "64 capital letters, digits and '_', not starting "
                                          "with a digit"),
    (JobIn, {"run_at": "tomorrow"},
     "run_at must be a date and time like 2026-01-31T09:00:00Z"),
    (JobIn, {"run_at": "2026-01-31T09:00:00"},
     "run_at must say its time zone, like 2026-01-31T09:00:00Z or 2026-01-31T10:00:00+01:00"),
    (BatchIn, {"jobs": [{}, {"surprise": 1}]}, "unknown field jobs[1].surprise"),
    (BatchIn, {"jobs": [{}, {"run_at": "9999-12-31T23:59:59-12:00"}]},
     "jobs[1]: run_at 9999-12-31T23:59:59-12:00 is out of range in UTC"),
    (ScheduleIn, {"name": "n" * 201, "cron": "* * * * *", "script": "f/x"},
     "name must have at most 200 characters"),
]


@pytest.mark.parametrize(("model", "body", "expected"), CASES,
                         ids=[expected[:40] for _, _, expected in CASES])
def test_a_validation_error_reads_as_plain_words(model: type, body: Any,
                                                 expected: str) -> None:
    with pytest.raises(msgspec.ValidationError) as refused:
        msgspec.json.decode(json.dumps(body), type=model)
    assert plain_message(refused.value, model) == expected
