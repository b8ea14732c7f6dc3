"""The package version, in a module of its own so that any module can read it without importing
the package root (whose lazy API attributes would make an import cycle of it)."""

VERSION = "0.1.0"
