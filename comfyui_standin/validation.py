"""Prompt validation with ComfyUI's rules, error types and error bodies (see POST /prompt)."""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from comfyui_standin.nodes import NODES, Dirs


@dataclass
class Validation:
    """Outcome of validating one prompt."""

    ok: bool
    error: dict[str, Any] | None = None
    good_outputs: list[str] = field(default_factory=list)
    node_errors: dict[str, Any] = field(default_factory=dict)


def full_type_name(kind: type) -> str:
    """``module.Qualname`` of an exception class, without ``builtins.``."""
    module = kind.__module__
    if module in (None, "builtins", "__builtin__"):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def is_link(value: Any) -> bool:
    """A link is ``[str node_id, int slot]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def _error(kind: str, message: str, details: str, extra_info: dict | None = None) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def _invalid_prompt(message: str, node_id: str) -> Validation:
    error = _error("invalid_prompt", message, f"Node ID '#{node_id}'")
    return Validation(ok=False, error=error)


def _types_match(received: str, expected: Any) -> bool:
    if isinstance(expected, list):
        expected = "COMBO"
    if received == "*" or expected == "*":
        return True
    return not set(received.split(",")) - set(str(expected).split(","))


def _convert(kind: Any, value: Any) -> Any:
    if kind == "INT":
        return int(value)
    if kind == "FLOAT":
        return float(value)
    if kind == "STRING":
        return str(value)
    if kind == "BOOLEAN":
        return bool(value)
    return value


class _Validator:
    """Validates the output nodes of one prompt, memoising every node it visits."""

    def __init__(self, prompt: dict, catalogue: dict[str, dict], dirs: Dirs) -> None:
        self.prompt = prompt
        self.catalogue = catalogue
        self.dirs = dirs
        self.validated: dict[str, tuple[bool, list[dict], str]] = {}

    def node(self, node_id: str) -> tuple[bool, list[dict], str]:
        if node_id in self.validated:
            return self.validated[node_id]
        node = self.prompt[node_id]
        inputs = node["inputs"]
        info = self.catalogue[node["class_type"]]["input"]
        required = info.get("required", {})
        optional = info.get("optional", {})
        node_def = NODES[node["class_type"]]
        errors: list[dict] = []
        valid = True
        for name in [*required, *optional]:
            spec = required.get(name) if name in required else optional[name]
            kind = spec[0]
            options = spec[1] if len(spec) > 1 else {}
            if name not in inputs:
                if name in required:
                    errors.append(
                        _error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            {"input_name": name},
                        )
                    )
                continue
            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append(
                        _error(
                            "bad_linked_input",
                            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            name,
                            {"input_name": name, "input_config": spec, "received_value": value},
                        )
                    )
                    continue
                source_id = value[0]
                # Deliberately unguarded: a missing node or slot raises, as in ComfyUI.
                source_class = self.prompt[source_id]["class_type"]
                received = tuple(self.catalogue[source_class]["output"])[value[1]]
                if not _types_match(received, kind):
                    errors.append(
                        _error(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            f"{name}, received_type({received}) mismatch input_type({kind})",
                            {
                                "input_name": name,
                                "input_config": spec,
                                "received_type": received,
                                "linked_node": value,
                            },
                        )
                    )
                    continue
                try:
                    if self.node(source_id)[0] is False:
                        valid = False
                except Exception as exc:
                    valid = False
                    kind_name = full_type_name(type(exc))
                    reasons = [
                        _error(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            str(exc),
                            {
                                "input_name": name,
                                "input_config": spec,
                                "exception_message": str(exc),
                                "exception_type": kind_name,
                                "traceback": traceback.format_tb(sys.exc_info()[2]),
                                "linked_node": value,
                            },
                        )
                    ]
                    self.validated[source_id] = (False, reasons, source_id)
                continue
            try:
                value = _convert(kind, value)
                inputs[name] = value
            except Exception as exc:
                errors.append(
                    _error(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {kind} value",
                        f"{name}, {value}, {exc}",
                        {
                            "input_name": name,
                            "input_config": spec,
                            "received_value": value,
                            "exception_message": str(exc),
                        },
                    )
                )
                continue
            if name in node_def.validated_inputs:
                continue
            error = self._check_value(name, spec, kind, options, value)
            if error is not None:
                errors.append(error)
        if node_def.validate_inputs is not None:
            given = {
                name: inputs[name]
                for name in node_def.validated_inputs
                if name in inputs and not isinstance(inputs[name], list)
            }
            if len(given) == len(node_def.validated_inputs):
                outcome = node_def.validate_inputs(self.dirs, given)
                if outcome is not True:
                    for name in given:
                        errors.append(
                            _error(
                                "custom_validation_failed",
                                "Custom validation failed for node",
                                f"{name} - {outcome}",
                                {"input_name": name},
                            )
                        )
        result = (False, errors, node_id) if errors or not valid else (True, [], node_id)
        self.validated[node_id] = result
        return result

    @staticmethod
    def _check_value(name: str, spec: list, kind: Any, options: dict, value: Any) -> dict | None:
        extra = {"input_name": name, "input_config": spec, "received_value": value}
        if "min" in options and value < options["min"]:
            return _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {options['min']}",
                name,
                extra,
            )
        if "max" in options and value > options["max"]:
            return _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {options['max']}",
                name,
                extra,
            )
        if isinstance(kind, list) and value not in kind:
            if len(kind) > 20:
                listed = f"(list of length {len(kind)})"
                config = None
            else:
                listed = str(kind)
                config = spec
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {listed}",
                {"input_name": name, "input_config": config, "received_value": value},
            )
        return None


def validate_prompt(
    prompt: Any,
    catalogue: dict[str, dict],
    dirs: Dirs,
    partial_targets: list[str] | None = None,
) -> Validation:
    """Validate ``prompt`` in place (coerced values replace the originals), like ComfyUI."""
    if not isinstance(prompt, dict):
        raise TypeError("prompt must be an object")  # ComfyUI answers 500 here
    for node_id, node in prompt.items():
        if "class_type" not in node:
            return _invalid_prompt(
                "Cannot execute because a node is missing the class_type property.", node_id
            )
        if node["class_type"] not in catalogue:
            return _invalid_prompt(
                f"Cannot execute because node {node['class_type']} does not exist.", node_id
            )
    outputs = [
        node_id
        for node_id, node in prompt.items()
        if NODES[node["class_type"]].output_node
        and (partial_targets is None or node_id in partial_targets)
    ]
    if not outputs:
        return Validation(ok=False, error=_error("prompt_no_outputs", "Prompt has no outputs", ""))

    validator = _Validator(prompt, catalogue, dirs)
    good: list[str] = []
    output_errors: list[dict] = []
    node_errors: dict[str, Any] = {}
    for output_id in outputs:
        try:
            valid, reasons, _ = validator.node(output_id)
        except Exception as exc:
            valid = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(exc),
                    {
                        "exception_type": full_type_name(type(exc)),
                        "traceback": traceback.format_tb(sys.exc_info()[2]),
                    },
                )
            ]
            validator.validated[output_id] = (False, reasons, output_id)
        if valid is True:
            good.append(output_id)
            continue
        output_errors.extend(reasons)
        for node_id, (node_valid, node_reasons, _) in validator.validated.items():
            if node_valid is True or not node_reasons:
                continue
            if node_id not in node_errors:
                node_errors[node_id] = {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                }
            node_errors[node_id]["dependent_outputs"].append(output_id)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for e in output_errors)
        error = _error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
        )
        return Validation(ok=False, error=error, node_errors=node_errors)
    return Validation(ok=True, good_outputs=good, node_errors=node_errors)
