"""Token classification: one tag per word (NER-style IOB2 tags, scored as entities)."""
