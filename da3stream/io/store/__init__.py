"""The Zarr run store: layout, crash-safe appends, resume state."""
