"""Corpus -> shards -> batches: reading, tokenizer, embedding, ordering, packing, shards, prepare."""
