"""Training, evaluation and export commands for every model (python -m training.<model> --help)."""
