"""Tenants of the shared backbone: their keys, corpora, heads, training jobs and exports."""
