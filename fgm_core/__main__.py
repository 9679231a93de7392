"""``python -m fgm_core``: the ``fgm`` command."""

from fgm_core.cli import main

main()
