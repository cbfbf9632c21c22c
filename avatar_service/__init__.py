"""Avatar generation service: a REST layer in front of ComfyUI."""
