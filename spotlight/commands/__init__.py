"""One module per `spotlight` subcommand, each with ``add_arguments(parser)`` and ``run(args)``."""
