"""``avatar``: the command line of the avatar service; it talks to the service over HTTP only."""
