"""Evaluation helpers shared by the families: image grids and metric files."""
