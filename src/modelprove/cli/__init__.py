"""The user's surface: the `modelprove` command line."""
