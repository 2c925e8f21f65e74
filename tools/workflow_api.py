"""UI-format workflow (what the frontend saves) → API-format prompt (what POST /prompt takes), offline.

ComfyUI 0.3.75 has no converter of its own; the frontend's `app.graphToPrompt()` is the reference. This is a small
port of its rules for the graphs we ship, driven by `GET /object_info`:

- `widgets_values` is positional over the node's *widget* inputs in INPUT_TYPES order (required, then optional);
  socket-only inputs (IMAGE, MODEL, ...) take no slot. An INT named seed/noise_seed, or flagged
  control_after_generate, is followed by one extra "fixed|increment|decrement|randomize" slot; a combo flagged
  image_upload/video_upload is followed by the upload button's slot.
- A linked input wins over its widget value; links into muted nodes vanish; a bypassed node passes its first input
  of the link's type through (or nothing).
- Fewer saved values than slots: the missing TRAILING slots of optional inputs take their defaults, as the
  frontend does when it loads a workflow saved before a node gained inputs (ComfyUI 0.25 added `bit_depth` to
  `CreateVideo`). Extra values, a missing required input, or a value of the wrong type for its slot stay errors.
- Frontend-only nodes (notes) are dropped; any other node type missing from /object_info is an error, never an
  empty node (comfy-cli's converter silently emits those).

tests/test_browser.py checks that `to_api` gives exactly what the real frontend's graphToPrompt gives for every
shipped workflow.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote"}  # drawn by the frontend, never sent to the server
SEED_NAMES = {"seed", "noise_seed"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
MODE_MUTED, MODE_BYPASSED = 2, 4
NO_DEFAULT = object()  # a missing slot the frontend would not fill


class WorkflowError(ValueError):
    """The workflow does not fit the server's nodes (missing type, widget values that do not fit, unknown link)."""


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of every required then optional input, in INPUT_TYPES order."""
    inputs, order = info.get("input", {}), info.get("input_order", {})
    result = []
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        for name in order.get(section) or list(specs):
            result.append((name, specs[name]))
    return result


def is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def combo_options(spec: list) -> list | None:
    """The choices of a combo input (old style: a list as the type; V3 style: "COMBO" with options)."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return (spec[1] if len(spec) > 1 else {}).get("options", [])
    return None


def widget_slots(info: dict) -> list[tuple[str, str, list | None]]:
    """The layout of a node's widgets_values: (input name, slot kind, spec) with kind "value" | "control" | "upload"."""
    slots = []
    for name, spec in _ordered_inputs(info):
        if not is_widget(spec):
            continue
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        slots.append((name, "value", spec))
        if spec[0] == "INT" and (options.get("control_after_generate") or name in SEED_NAMES):
            slots.append((name, "control", None))
        if combo_options(spec) is not None and (options.get("image_upload") or options.get("video_upload")):
            slots.append((name, "upload", None))
    return slots


def missing_node_types(workflow: dict, object_info: dict) -> list[str]:
    types = {node["type"] for node in workflow["nodes"]}
    return sorted(types - set(object_info) - FRONTEND_ONLY_TYPES)


def _optional_names(info: dict) -> set[str]:
    return set((info.get("input") or {}).get("optional") or {})


def _default_of(name: str, kind: str, spec: list | None, optional: set[str]):
    """What the frontend puts in a slot the saved workflow lacks; NO_DEFAULT where it would not pad it."""
    if name not in optional:
        return NO_DEFAULT
    if kind == "control":
        return "fixed"
    if kind == "upload":
        return "image"
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    choices = combo_options(spec)
    return choices[0] if choices else NO_DEFAULT


def value_fits(kind: str, spec: list | None, value) -> bool:
    """Whether `value` has the type of its slot (a saved value shifted into a neighbour's slot usually has not)."""
    if kind == "control":
        return value in CONTROL_VALUES
    if kind == "upload" or combo_options(spec) is not None:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    check = {
        "INT": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "FLOAT": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "STRING": lambda v: isinstance(v, str),
        "BOOLEAN": lambda v: isinstance(v, bool),
    }.get(spec[0])
    return check is None or check(value)


def padded_widget_values(node: dict, info: dict) -> list:
    """A UI node's widgets_values (a list) padded like the frontend pads them, one per slot of widget_slots(info).

    A workflow saved before a node gained trailing OPTIONAL widgets lacks their slots: they take their defaults
    (ComfyUI 0.25's `CreateVideo.bit_depth` is one). Anything else raises WorkflowError: more values than slots, a
    missing required widget, or a value whose type does not fit its slot (an input inserted in the middle shifts
    every later value into its neighbour's slot).
    """
    slots = widget_slots(info)
    values = list(node.get("widgets_values") or [])
    where = f"node {node['id']} ({node['type']})"
    layout = [name if kind == "value" else f"{name}:{kind}" for name, kind, _ in slots]
    optional = _optional_names(info)
    padding = [_default_of(name, kind, spec, optional) for name, kind, spec in slots[len(values) :]]
    if len(values) > len(slots) or NO_DEFAULT in padding:
        raise WorkflowError(
            f"{where} has {len(values)} widget values {values!r}, but the installed node expects {len(slots)}: "
            f"{layout}. The node's inputs changed since the workflow was saved; re-create it."
        )
    for (name, kind, spec), value in zip(slots, values):
        if not value_fits(kind, spec, value):
            raise WorkflowError(
                f"{where}: saved value {value!r} does not fit widget {name!r} ({spec[0] if spec else kind}) of the "
                f"installed node {layout}; an input was added or moved since the workflow was saved. Re-create it."
            )
    return values + padding


def widget_inputs(node: dict, info: dict) -> dict:
    """{input name: value} from a UI node's widgets_values (padded; see padded_widget_values)."""
    slots = widget_slots(info)
    values = node.get("widgets_values") or []
    if isinstance(values, dict):  # nodes with a JS extension may save a dict (VHS); keys are the input names
        return {name: values[name] for name, kind, _ in slots if kind == "value" and name in values}
    padded = padded_widget_values(node, info)
    return {name: value for (name, kind, _), value in zip(slots, padded) if kind == "value"}


def to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt {node id: {class_type, inputs, _meta}} that the frontend would queue for `workflow`."""
    missing = missing_node_types(workflow, object_info)
    if missing:
        raise WorkflowError(f"node types not installed on this server: {', '.join(missing)}")
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links", [])}  # [id, from node, from slot, to node, to slot, type]

    def source(link_id, seen=()):
        """(node id, output slot) feeding `link_id`, looking through bypassed nodes; None when nothing feeds it."""
        if link_id not in links:
            raise WorkflowError(f"link {link_id} is used by a node but missing from the workflow's links")
        _, origin, slot, _, _, link_type = links[link_id]
        node = nodes.get(origin)
        if node is None or node.get("mode", 0) == MODE_MUTED or node["type"] in FRONTEND_ONLY_TYPES:
            return None
        if node.get("mode", 0) == MODE_BYPASSED:
            if origin in seen:
                return None
            for upstream in node.get("inputs") or []:
                if upstream.get("link") is not None and upstream.get("type") == link_type:
                    return source(upstream["link"], seen + (origin,))
            return None
        return str(origin), slot

    prompt = {}
    for node_id, node in sorted(nodes.items()):
        if node["type"] in FRONTEND_ONLY_TYPES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        info = object_info[node["type"]]
        inputs = widget_inputs(node, info)
        for socket in node.get("inputs") or []:
            if socket.get("link") is None:
                continue
            fed_by = source(socket["link"])
            if fed_by is None:
                inputs.pop(socket["name"], None)
            else:
                inputs[socket["name"]] = list(fed_by)
        title = node.get("title") or info.get("display_name") or node["type"]
        prompt[str(node_id)] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return prompt
