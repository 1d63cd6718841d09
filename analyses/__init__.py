"""One script per figure; :mod:`analyses.run_all` runs every one of them."""
