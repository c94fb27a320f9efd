"""Loop closure: the place index (a search index), candidate search, verification and graph edges."""
