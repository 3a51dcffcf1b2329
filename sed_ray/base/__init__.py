"""The base a run starts from, resolved once before any launch (the tiny preset builds its own)."""
