"""What can be wrong with a workflow, its side files or a request's parameters.

Exceptions (catch at the level you need)::

    WorkflowError              code, message, details
    +-- InvalidWorkflowError   invalid_workflow: not a graph, bad link, unreadable file
    |   +-- UIFormatError      ui_format_workflow: the UI "Save" format, not the API format
    +-- InvalidPresetsError    invalid_presets: <name>.presets.json missing or malformed
    +-- InvalidBindingError    workflow_invalid_binding: a binding names a bad node or input
    +-- MissingRoleError       workflow_missing_role: no node plays a role (photo, size, ...)
    +-- AmbiguousRoleError     workflow_ambiguous_role: several nodes could play a role
    +-- InvalidParameterError  invalid_parameter: bad gender/seed/size/image for patch_workflow
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class WorkflowError(Exception):
    """Base of every workflow error: a snake_case code, a message and JSON-ready details."""

    code = "workflow_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return self.message

    def in_file(self, path: Path) -> WorkflowError:
        """Name the file the error comes from, in the message and the details; returns self."""
        if "file" not in self.details:
            self.details = {"file": path.name, **self.details}
            self.message = f"{path.name}: {self.message}"
            self.args = (self.message,)
        return self


class InvalidWorkflowError(WorkflowError):
    """The data is not a valid API-format ComfyUI graph."""

    code = "invalid_workflow"


class UIFormatError(InvalidWorkflowError):
    """The data is a UI-format workflow (nodes/links), which ComfyUI's /prompt does not accept."""

    code = "ui_format_workflow"


class InvalidPresetsError(WorkflowError):
    """The presets file of a workflow is missing or malformed."""

    code = "invalid_presets"


class InvalidBindingError(WorkflowError):
    """An explicit role binding names a missing node or input, or a node of the wrong kind."""

    code = "workflow_invalid_binding"


class MissingRoleError(WorkflowError):
    """No node in the graph plays a role the service needs."""

    code = "workflow_missing_role"


class AmbiguousRoleError(WorkflowError):
    """Several nodes could play one role; the details name the candidates."""

    code = "workflow_ambiguous_role"


class InvalidParameterError(WorkflowError):
    """A per-request parameter for patch_workflow is out of range or unknown."""

    code = "invalid_parameter"
