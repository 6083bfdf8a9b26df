"""File conversions: uploads turned into other formats by background jobs."""
