"""Neural network modules. Nothing here knows about files, sessions or the CLI."""
