__version__ = "1.0.0"  # the first published version (adapter file format 1.0)
