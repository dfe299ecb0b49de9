"""One generated token against the current segment's cache plus the memory read."""
