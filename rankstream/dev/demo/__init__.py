"""`rankstream demo`: the whole system end to end on one machine (see rankstream.dev.demo.runner)."""
