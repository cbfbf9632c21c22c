"""Readiness: which ComfyUI servers can run the styles now, and why not.

Each time a client connects, every style is checked against that server's ``/object_info``
(``check_workflows``); a server whose catalogue changed offers again the styles it had been
withheld. ``report()`` answers ``GET /readyz``: per server, websocket up, HTTP answering, the
stand-in or a real ComfyUI, jobs held, given up since when, the styles' problems; the service is
ready when one server can run the default style. In a fleet the coordination adds the database
and the live workers of every process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .comfyui import ComfyUIClient, ComfyUIError, SystemStats
from .comfyui.workflows import Workflow, check_against_object_info
from .config import Settings
from .jobs.dispatcher import Dispatcher
from .times import iso

logger = logging.getLogger(__name__)


class Readiness:
    """What each ComfyUI server of this process can run, read when it connects and when asked."""

    def __init__(
        self,
        *,
        settings: Settings,
        workflows: Mapping[str, Workflow],
        clients: Sequence[ComfyUIClient],
        dispatcher: Dispatcher,
    ) -> None:
        self.settings = settings
        self.workflows = workflows
        self.clients = clients
        self.dispatcher = dispatcher
        # server URL -> style -> problems found in its /object_info (absent: not checked yet)
        self.workflow_problems: dict[str, dict[str, list[dict[str, Any]]]] = {}
        # server URL -> whether its last /system_stats answer came from the stand-in: a server
        # that is down says nothing, and the stand-in it was stays the stand-in until it answers.
        self.standin_seen: dict[str, bool] = {}

    def check_workflows(self, client: ComfyUIClient) -> None:
        """Check every style against a server's /object_info (run each time it connects)."""
        try:
            object_info = client.object_info()
        except ComfyUIError as exc:
            logger.warning("could not read /object_info of %s: %s", client.base_url, exc)
            return
        except RuntimeError:  # the client was closed while the check ran (shutdown)
            return
        report = {}
        for name, workflow in sorted(self.workflows.items()):
            problems = check_against_object_info(workflow.graph, object_info)
            report[name] = [problem.to_dict() for problem in problems]
            for problem in problems:
                logger.warning(
                    "style %r cannot run on %s: node %s (%s): %s; fix: %s",
                    name,
                    client.base_url,
                    problem.node_id,
                    problem.class_type,
                    problem.message,
                    problem.fix,
                )
        self.workflow_problems[client.base_url] = report
        state = self.dispatcher.states.get(client.base_url)
        if state is not None:
            state.catalogue_read(object_info)

    def report(self) -> dict[str, Any]:
        """GET /readyz: this process's servers, completed by the coordination (a fleet)."""
        return self.dispatcher.coordination.readiness(self._with_agents(self._local()))

    def _with_agents(self, local: dict[str, Any]) -> dict[str, Any]:
        """Worker agents' servers count too: ready when one of them can take jobs."""
        agents = self.dispatcher.agents
        if agents is None:
            return local
        described = agents.describe()
        local["agents"] = described
        if not local["ready"] and any(agent["usable"] for agent in described):
            local["ready"] = True
            local.pop("reason", None)
        elif not local["ready"]:
            local["reason"] += "; no worker agent can take jobs either"
        return local

    def _local(self) -> dict[str, Any]:
        """This process's own ComfyUI servers; ready when one can run the default style."""
        dispatch = self.dispatcher.snapshot()
        servers = {
            client.base_url: self._server(client, dispatch.get(client.base_url, {}))
            for client in self.clients
        }
        ready = any(state["ready"] for state in servers.values())
        # True when every server known (answering now, or last time it answered) is the stand-in:
        # its images are not real avatars. A server never heard from tells nothing.
        known = [state["standin"] for state in servers.values() if "standin" in state]
        standin = bool(known) and all(known)
        report: dict[str, Any] = {"ready": ready, "standin": standin, "servers": servers}
        if not ready:
            reachable = any(state["websocket"] and state["http"] for state in servers.values())
            report["reason"] = (
                f"no reachable ComfyUI server can run the default style "
                f"{self.settings.default_style!r}"
                if reachable
                else "no ComfyUI server is reachable"
            )
        return report

    def _server(self, client: ComfyUIClient, held: Mapping[str, Any]) -> dict[str, Any]:
        """One server: websocket, HTTP, version, stand-in, jobs, styles' problems, ready."""
        state: dict[str, Any] = {"websocket": client.connected}
        state["down"] = held.get("down", False)
        if held.get("downSince") is not None:
            state["downSince"] = iso(held["downSince"])
        state["stalled"] = held.get("stalled", False)
        if held.get("stalledUntil") is not None:
            state["stalledUntil"] = iso(held["stalledUntil"])
        state["jobs"], state["slots"] = held.get("jobs", 0), held.get("slots", 0)
        if held.get("withheldStyles"):
            state["withheldStyles"] = held["withheldStyles"]
        try:
            stats = SystemStats.from_answer(
                client.system_stats(timeout=self.settings.comfyui_connect_timeout)
            )
            state["http"] = True
            state["version"] = stats.comfyui_version
            state["standin"] = self.standin_seen[client.base_url] = stats.standin
        except ComfyUIError as exc:
            state["http"] = False
            state["error"] = exc.message
            if client.base_url in self.standin_seen:
                state["standin"] = self.standin_seen[client.base_url]
        if not client.connected and client.last_error:
            state.setdefault("error", client.last_error)
        checked = self.workflow_problems.get(client.base_url)
        if checked is not None:
            state["workflows"] = {
                name: {"ok": not problems, "problems": problems}
                for name, problems in checked.items()
            }
        default_ok = not (checked or {}).get(self.settings.default_style)
        state["ready"] = bool(
            state["websocket"]
            and state["http"]
            and default_ok
            and not state["down"]
            and not state["stalled"]
        )
        return state
