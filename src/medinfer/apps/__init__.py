"""The seed systems as apps: pre-processing + model + post-processing + metrics + outputs."""
