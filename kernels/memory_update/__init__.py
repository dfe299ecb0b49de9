"""A segment's write into the compressive memory: linear and delta rules."""
