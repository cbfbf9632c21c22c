"""``python -m avatar_service.agent``: the same as ``avatar-worker``."""

from .main import main

main()
