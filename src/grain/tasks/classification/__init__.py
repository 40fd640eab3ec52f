"""Sequence classification: one label (or, with one output, a number) per sentence or sentence pair."""
