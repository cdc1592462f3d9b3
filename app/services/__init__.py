"""Services: the rules of the domain; routes and tasks call these."""
