"""Evaluation metrics and benchmark protocols."""
