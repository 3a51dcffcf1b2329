"""The corpus layer: synthesis, corpus readers, audio, shards, the training stream and its collate step."""
