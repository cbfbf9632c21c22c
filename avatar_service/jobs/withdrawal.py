"""Withdrawing a prompt from ComfyUI: out of its queue, or interrupted if it runs."""

from __future__ import annotations

import logging

import httpx

from ..comfyui import ComfyUIClient, ComfyUIError

logger = logging.getLogger(__name__)


def withdraw(client: ComfyUIClient, prompt_id: str) -> bool:
    """Remove a prompt from ComfyUI's queue, or interrupt it if it runs; True when sent.

    Deleting first means it cannot start between the two calls; the interrupt names the prompt,
    so ComfyUI ignores it unless that very prompt is running.
    """
    try:
        client.delete_pending([prompt_id])
        client.interrupt(prompt_id)
    except ComfyUIError as exc:
        logger.warning("could not withdraw prompt %s from ComfyUI: %s", prompt_id, exc)
        return False
    return True


# Timeouts of the HTTP calls to a server this process does not drive.
FOREIGN_TIMEOUT = httpx.Timeout(5.0, connect=2.0)


def withdraw_from(server: str, prompt_id: str) -> bool:
    """Withdraw a prompt from a server this process does not drive (HTTP only); True if sent."""
    client = ComfyUIClient(server, timeout=FOREIGN_TIMEOUT)
    try:
        return withdraw(client, prompt_id)
    finally:
        client.close()
