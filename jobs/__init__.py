"""Command-line entry points, one module per job (`python -m jobs.<name> --help`)."""
