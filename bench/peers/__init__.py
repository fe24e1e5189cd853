"""One runner per peer system; each installs, starts, measures and stops its own servers."""
