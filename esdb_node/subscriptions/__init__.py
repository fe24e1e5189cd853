"""Subscriptions: readers that catch up from a position and then follow commits
(`reader.py`), the signal that wakes them (`head.py`), and later persistent consumer groups.

Everything that delivers events in order from a point and keeps going (`esdb tail`, SSE,
persistent subscriptions, KurrentDB catch-up subscriptions) reads through `reader.py`, so
a faster fan-out changes one place.
"""
