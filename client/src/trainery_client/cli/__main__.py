"""`python -m trainery_client.cli`: the `trainery` command."""

from trainery_client.cli import main

main()
