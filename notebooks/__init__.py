"""The parameterised notebooks that pipelines run, shipped as package data."""
