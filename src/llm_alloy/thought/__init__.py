"""Thought-level fusion: reasoning templates distilled from the best logged responses, retrieved and
put before new queries (FusionFactory §3)."""
