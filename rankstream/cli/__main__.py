"""``python -m rankstream.cli``: the same as the ``rankstream`` script."""

from rankstream.cli import main

main()
