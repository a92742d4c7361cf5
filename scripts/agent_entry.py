"""Entry point of the `tagrun-agent` executable (a one-folder bundle) built by scripts/build-agent.

Installed agents start at `tagrun.agent.cli:main` (the console script) instead.
"""

from __future__ import annotations

import sys

from tagrun.agent.frozen import prepare_frozen_process, run_python, runs_python

if __name__ == "__main__":
    prepare_frozen_process()
    if runs_python(sys.argv[1:]):  # started as a Python, not as the agent: see frozen.py
        import multiprocessing

        # A Python job's multiprocessing starts its workers and helpers (resource tracker,
        # forkserver) by running this executable again: this runs them.
        multiprocessing.freeze_support()
        sys.exit(run_python(sys.argv[1:]))
    from tagrun.agent.cli import main  # typer's import is paid by the agent only

    main()
