"""Extractive question answering: the answer is a span of the context, predicted by start and end logits."""
