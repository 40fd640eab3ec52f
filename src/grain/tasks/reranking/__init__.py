"""The reranking task type: cross-encoders scoring (query, passage) pairs with one logit."""
