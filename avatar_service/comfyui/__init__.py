"""ComfyUI: the client (HTTP and websocket), its formats, and workflow templates.

The only package that reads what ComfyUI sends.
"""
