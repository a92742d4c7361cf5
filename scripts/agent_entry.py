"""Entry point of the one-file `tagrun-agent` executable, frozen by scripts/build-agent.

Installed agents start at `tagrun.agent.cli:main` (the console script) instead.
"""

from __future__ import annotations

import multiprocessing

from tagrun.agent.cli import main
from tagrun.agent.frozen import prepare_frozen_process

if __name__ == "__main__":
    prepare_frozen_process()
    # A Python job using multiprocessing starts helpers by running this executable again.
    multiprocessing.freeze_support()
    main()
