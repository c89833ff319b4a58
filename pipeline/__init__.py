"""The engine: stage contract, runner on Ray, run layout and manifest I/O, config, CLI."""
