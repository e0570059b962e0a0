"""CLI sub-commands: one module each, discovered by ``robustsweep.cli``.

A command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""
