"""`esdb dashboard`: a Textual view of a cluster (see DESIGN.md in this directory).

Only `app.py` imports Textual; `poller`, `changes`, `throughput`, `render` and `actions` are
headless, so the data, the event log and the chaos actions are tested without a terminal.
"""
