"""One module per `mp-lightning` subcommand (see `mp_lightning.cli`)."""
