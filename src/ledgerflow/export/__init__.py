"""The daily batch export: CSV profiles, destinations and the exactly-once saga."""
