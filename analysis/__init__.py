"""Tables, figures and reports computed from result tables (and caches)."""
