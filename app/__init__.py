"""Trainery API process: never imports torch or tensorflow."""
