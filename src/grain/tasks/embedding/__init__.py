"""The sentence-embedding task type: a sentence-transformers model as teacher, distilled in embedding space,
scored by retrieval (`retrieval`) on BEIR-layout data or the offline SQuAD benchmark (`squad_retrieval`)."""
