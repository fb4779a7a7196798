"""What a BrowserSession's author may ask of its pod, as pure functions of plain data.

Whoever may create a BrowserSession must not thereby choose the code that runs (``image``: it
also chooses the CDP endpoint every streamer connects to), land on any node (``tolerations``,
``nodeSelector``), or drop the memory limit (``resources``). The operator's settings say what is
allowed; a spec asking for more fails (``SpecNotAllowed``, phase Failed). The chart's
ValidatingAdmissionPolicy (charts/jiomosa/templates/browser/admission-policy.yaml) refuses the
same specs at the API server, from the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from jiomosa_operator.settings import OperatorSettings, quantity

RESOURCE_KINDS = ("cpu", "memory")


class SpecNotAllowed(ValueError):
    """The spec asks for something the operator's settings do not allow."""


def image_allowed(image: str, settings: OperatorSettings) -> bool:
    if image == settings.image:
        return True
    for entry in settings.allowed_images:
        if entry.endswith("*"):
            if image.startswith(entry[:-1]):
                return True
        elif image == entry:
            return True
    return False


def node_selector_problems(selector: Mapping[str, str], settings: OperatorSettings) -> list[str]:
    allowed_pairs = {e for e in settings.allowed_node_selectors if "=" in e}
    allowed_keys = {e for e in settings.allowed_node_selectors if "=" not in e}
    return [f"nodeSelector {key}={value} is not allowed"
            for key, value in sorted(selector.items())
            if key not in allowed_keys and f"{key}={value}" not in allowed_pairs]


def toleration_problems(tolerations: Sequence[Mapping[str, Any]],
                        settings: OperatorSettings) -> list[str]:
    problems = []
    for toleration in tolerations:
        key = str(toleration.get("key") or "")
        if not key:
            problems.append("a toleration without a key (it tolerates every taint) is not allowed")
        elif key not in settings.allowed_tolerations:
            problems.append(f"tolerating taint {key} is not allowed")
    return problems


def pod_resources(spec_resources: Mapping[str, Any],
                  settings: OperatorSettings) -> dict[str, dict[str, str]]:
    """The browser container's resources: the spec's values merged over the operator's
    defaults, each at most the operator's maximum, a memory limit always present. Raise
    SpecNotAllowed for what cannot be run."""
    problems: list[str] = []
    given: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
    raw: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    maxima = {"cpu": settings.max_cpu, "memory": settings.max_memory}
    for part in ("requests", "limits"):
        values = spec_resources.get(part) or {}
        if not isinstance(values, Mapping):
            raise SpecNotAllowed(f"resources.{part} must be a map")
        for kind, value in values.items():
            if kind not in RESOURCE_KINDS:
                problems.append(f"resources.{part}.{kind}: only cpu and memory may be set")
                continue
            amount = quantity(value)
            if amount is None or amount < 0 or (part == "limits" and amount == 0):
                problems.append(f"resources.{part}.{kind}: {value!r} is no usable quantity")
            elif amount > (quantity(maxima[kind]) or 0):
                problems.append(f"resources.{part}.{kind} {value} is above the operator's "
                                f"maximum {maxima[kind]}")
            else:
                given[part][kind] = amount
                raw[part][kind] = str(value)
    defaults = {"requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
                "limits": {"cpu": settings.cpu_limit,
                           "memory": settings.memory_limit or settings.max_memory}}
    out: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for part in ("requests", "limits"):
        for kind in RESOURCE_KINDS:
            value = raw[part].get(kind) or defaults[part][kind]
            if value:
                out[part][kind] = value
    for kind in RESOURCE_KINDS:
        request, limit = out["requests"].get(kind), out["limits"].get(kind)
        if request is None or limit is None or (quantity(request) or 0) <= (quantity(limit) or 0):
            continue
        if kind in given["requests"] and kind in given["limits"]:
            problems.append(f"resources.requests.{kind} is above resources.limits.{kind}")
        elif kind in given["requests"]:
            out["limits"][kind] = request  # the default limit is lower than what was asked
        else:
            out["requests"][kind] = limit  # a lower limit than the default request
    if problems:
        raise SpecNotAllowed("; ".join(problems))
    return {part: values for part, values in out.items() if values}


def check(image: str, resources: Mapping[str, Any], node_selector: Mapping[str, str],
          tolerations: Sequence[Mapping[str, Any]], settings: OperatorSettings) -> None:
    """Raise SpecNotAllowed, with every problem, for a spec the settings do not allow."""
    problems = []
    if not image_allowed(image, settings):
        problems.append(f"image {image} is not allowed (JIOMOSA_OPERATOR_ALLOWED_IMAGES)")
    problems += node_selector_problems(node_selector, settings)
    problems += toleration_problems(tolerations, settings)
    try:
        pod_resources(resources, settings)
    except SpecNotAllowed as exc:
        problems.append(str(exc))
    if problems:
        raise SpecNotAllowed("; ".join(problems))
