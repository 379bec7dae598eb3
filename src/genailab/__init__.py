"""genailab."""
