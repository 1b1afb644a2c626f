"""dae's pipeline: config, DAG, runner and CLI."""
