"""farmbench: build MobileNet variants and benchmark them on phones, edge boards and the host."""

__version__ = "0.1.0"
