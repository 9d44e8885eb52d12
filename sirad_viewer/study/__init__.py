"""Reader studies: protocol, sessions, storage, statistics. No Qt."""
