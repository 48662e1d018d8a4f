"""Command line: main (the `steer` command: its parser, one subcommand per stage, and error handling)."""
