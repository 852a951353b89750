"""The suite's Hydra configs (``conf/config.yaml`` and its groups), shipped with the package as its data.

The command finds them as ``pkg://conf`` (:data:`experiments.tasks.cli.CONF_DIR`), from a checkout and from an
installed wheel alike. Nothing is imported from here.
"""
