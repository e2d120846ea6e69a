"""Sweep configs: each holds the edit config it sweeps and the value lists of its trials."""
