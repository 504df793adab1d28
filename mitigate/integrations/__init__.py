"""Bridges to trainers outside this package (`mitigate.integrations.trl`). Imported on demand only:
nothing in the package imports them, so TRL stays an optional dependency."""
