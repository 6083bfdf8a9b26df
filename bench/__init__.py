"""Hubbub's benchmark: ``make bench`` (quick) or ``make bench FULL=1``. See docs/performance.md."""
