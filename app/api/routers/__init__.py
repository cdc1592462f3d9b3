"""HTTP routes: parse input, call a service, shape the output."""
