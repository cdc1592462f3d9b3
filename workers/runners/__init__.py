"""One runner per framework; a runner process imports exactly one of them."""
