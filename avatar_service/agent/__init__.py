"""Worker agents (``avatar-worker``): the service's engine beside a ComfyUI anywhere."""
