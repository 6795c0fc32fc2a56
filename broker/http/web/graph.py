"""Lay out a credential's lineage as a left-to-right graph for server-rendered SVG.

authorizer → run → root … parent → **credential** → children → statements

Pure function of a lineage view (:func:`broker.audit.views.lineage_view`): it returns boxes
and edges with coordinates; the template draws them (and Jinja escapes every string). Long
texts are shortened here; the full text is in each box's ``title`` (an SVG tooltip).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NODE_W = 230
NODE_H = 60
COL_GAP = 50
ROW_GAP = 14
PAD = 16
MAX_CHILDREN = 10
MAX_STATEMENTS = 8
CHILD_STATEMENTS = 2


@dataclass
class Box:
    id: str
    kind: str                 # authorizer | run | ancestor | credential | child | statement | more
    label: str
    sublabel: str
    title: str                # full text, shown as a tooltip
    extra: str = ""           # a third line (credentials: status, uses, children)
    href: str | None = None
    css: str = ""
    x: int = 0
    y: int = 0
    w: int = NODE_W
    h: int = NODE_H


@dataclass
class Graph:
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    edges: list[str] = field(default_factory=list)   # SVG path data


def shorten(text: Any, limit: int = 30) -> str:
    value = " ".join(str(text if text is not None else "").split())
    return value if len(value) <= limit else value[:limit - 1] + "…"


def authorizer_text(authorizer: Any) -> tuple[str, str]:
    if not isinstance(authorizer, dict):
        return "unknown authorizer", ""
    kind = str(authorizer.get("type") or "")
    named_policy = authorizer.get("policy")
    policy: dict[str, Any] = named_policy if isinstance(named_policy, dict) else {}
    if kind == "human":             # a person's approval (docs/approvals.md)
        approvers = ", ".join(str(a) for a in authorizer.get("approvers") or []) or "?"
        return (f"approved by {approvers}",
                f"{authorizer.get('approval_id') or ''} · policy {policy.get('name', '?')}")
    if kind == "delegation":        # an agent acting for a person
        return (f"delegated by {authorizer.get('granted_by', '?')}",
                f"{authorizer.get('grant_id') or 'ID token'} · policy {policy.get('name', '?')}")
    if kind == "policy" or ("name" in authorizer and "approver" not in authorizer):
        digest = str(authorizer.get("digest") or "")
        return f"policy {authorizer.get('name', '?')}", digest[:23]
    if "approver" in authorizer:
        return f"approved by {authorizer.get('approver')}", str(authorizer.get("approval_id") or "")
    return kind or "authorizer", ", ".join(f"{k}={v}" for k, v in sorted(authorizer.items()))


def run_text(run: Any) -> tuple[str, str]:
    if not isinstance(run, dict) or not run:
        return "no run", ""
    label = f"run {run.get('id', '?')}"
    if run.get("attempt") is not None:
        label += f" · attempt {run['attempt']}"
    rest = [f"{k}={v}" for k, v in sorted(run.items()) if k not in ("id", "attempt")]
    return label, ", ".join(rest)


def _credential_box(node: dict[str, Any], kind: str, href: str | None) -> Box:
    cid = node["credential_id"]
    children = len(node.get("children") or [])
    usage = (node.get("usage") or {}).get("count", 0)
    facts = f"{node.get('status')} · {usage} use{'s' if usage != 1 else ''}"
    if children:
        facts += f" · {children} child{'ren' if children != 1 else ''}"
    return Box(id=cid, kind=kind, label=shorten(f"{cid[:6]}…{cid[-4:]} → {node.get('target')}", 30),
               sublabel=shorten(node.get("principal"), 36), extra=shorten(facts, 40),
               title=f"{cid}\n{node.get('principal')}\n{node.get('target')} · {facts}",
               href=href, css=f"status-{node.get('status')}")


def layout(view: dict[str, Any], *, credential_href: Any) -> Graph:
    """``credential_href(credential_id) -> str`` links credential boxes to their pages."""
    credential = view["credential"]
    chain = list(reversed(view.get("ancestors") or []))            # root first
    columns = _chain_columns(credential, chain, credential_href)

    # The column after the credential: its children, then its own statements; the next
    # column: the children's first statements. Every edge goes one column right, so the
    # boxes never sit on top of an edge.
    derived, owners = _derived_boxes(view, credential, credential_href)
    if derived:
        columns.append(derived)
    grand: list[tuple[Box, Box]] = []
    for owner, child in owners:
        for box in _statement_boxes(child, CHILD_STATEMENTS, prefix=child["credential_id"]):
            grand.append((owner, box))
    if grand:
        columns.append([box for _, box in grand])

    graph = _place(columns)
    # Edges: along the chain, then from the credential to what derives from it, then from
    # each child to its statements.
    chain_end = 2 + len(chain)                   # index of the credential's column
    for i in range(chain_end):
        graph.edges.append(_edge(columns[i][0], columns[i + 1][0]))
    if derived:
        for box in derived:
            graph.edges.append(_edge(columns[chain_end][0], box))
    for owner, box in grand:
        graph.edges.append(_edge(owner, box))
    return graph


def _chain_columns(credential: dict[str, Any], chain: list[dict[str, Any]],
                   credential_href: Any) -> list[list[Box]]:
    """The authorizer, the run, the ancestors (root first) and the credential: one column each."""
    root = chain[0] if chain else credential
    columns: list[list[Box]] = []
    label, sub = authorizer_text(root.get("authorizer"))
    columns.append([Box(id="authorizer", kind="authorizer", label=shorten(label, 30),
                        sublabel=shorten(sub, 38), title=f"{label}\n{sub}")])
    label, sub = run_text(root.get("run"))
    columns.append([Box(id="run", kind="run", label=shorten(label, 30), sublabel=shorten(sub, 38),
                        title=f"{label}\n{sub}")])
    for ancestor in chain:
        columns.append([_credential_box(ancestor, "ancestor",
                                        credential_href(ancestor["credential_id"]))])
    columns.append([_credential_box(credential, "credential", None)])
    return columns


def _derived_boxes(view: dict[str, Any], credential: dict[str, Any], credential_href: Any
                   ) -> tuple[list[Box], list[tuple[Box, dict[str, Any]]]]:
    """What derives from the credential (children, "+N more", its own statements) and each
    child box with its node."""
    children = view.get("descendants") or []
    derived: list[Box] = []
    owners: list[tuple[Box, dict[str, Any]]] = []
    for child in children[:MAX_CHILDREN]:
        box = _credential_box(child, "child", credential_href(child["credential_id"]))
        derived.append(box)
        owners.append((box, child))
    if len(children) > MAX_CHILDREN:
        more = len(children) - MAX_CHILDREN
        derived.append(Box(id="more-children", kind="more", label=f"+{more} more",
                           sublabel="children", title=f"{more} more children"))
    derived.extend(_statement_boxes(credential, MAX_STATEMENTS))
    return derived, owners


def _place(columns: list[list[Box]]) -> Graph:
    """Columns left to right, each centred vertically."""
    tallest = max(len(c) for c in columns)
    height = PAD * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP
    graph = Graph(width=PAD * 2 + len(columns) * NODE_W + (len(columns) - 1) * COL_GAP,
                  height=height)
    for i, column in enumerate(columns):
        span = len(column) * NODE_H + (len(column) - 1) * ROW_GAP
        top = (height - span) // 2
        for j, box in enumerate(column):
            box.x = PAD + i * (NODE_W + COL_GAP)
            box.y = top + j * (NODE_H + ROW_GAP)
            graph.boxes.append(box)
    return graph


def _statement_boxes(node: dict[str, Any], limit: int, *, prefix: str = "") -> list[Box]:
    """The first ``limit`` usage events of ``node`` as boxes, and a "+N more" box."""
    usage = node.get("usage") or {}
    boxes = []
    for event in (usage.get("events") or [])[:limit]:
        details = event.get("details") or {}
        text = details.get("statement") or details.get("operation") or event.get("type")
        sub = " · ".join(str(details[k]) for k in ("command_tag", "database") if details.get(k))
        boxes.append(Box(id=f"usage-{event['seq']}", kind="statement", label=shorten(text, 30),
                         sublabel=shorten(sub or event["ts"], 38),
                         title=f"seq {event['seq']} · {event['ts']}\n{text}"))
    more = int(usage.get("count", 0)) - len(boxes)
    if more > 0:
        boxes.append(Box(id=f"more-statements{'-' + prefix if prefix else ''}", kind="more",
                         label=f"+{more} more", sublabel="statements",
                         title=f"{more} more usage events"))
    return boxes


def _edge(a: Box, b: Box) -> str:
    x1, y1 = a.x + a.w, a.y + a.h // 2
    x2, y2 = b.x, b.y + b.h // 2
    mid = (x1 + x2) // 2
    return f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"
