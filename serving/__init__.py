"""Export to TF Serving's layout (and, later, the embedded server and clients)."""
