from __future__ import annotations

from tagrun.agent.cli import main

main()
