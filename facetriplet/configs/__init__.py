"""The shipped experiment configs: `--config=<name>` (e.g. lfw) or `--config=configs/<name>.py`."""
