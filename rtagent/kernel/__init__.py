"""The kernel floor: thin, typed wrappers over kernel interfaces."""
