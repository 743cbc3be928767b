"""Multi-LLM log data: one typed row per (query, arm) response, keyed by ids, never by position."""
