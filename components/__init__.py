"""One module per pipeline stage, plus the artifact formats and model families they share."""
