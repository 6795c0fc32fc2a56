"""``broker ledger verify``: the chain, the tree, the stored checkpoints and, optionally, an
append-only proof against a checkpoint kept outside the broker.

1. **Chain** — :meth:`Ledger.verify` recomputes every event hash and link.
2. **Tree** — :func:`broker.transparency.tree.verify_tree` recomputes the Merkle tree from the events
   and compares every stored node (``merkle_nodes``) with it.
3. **Stored checkpoints** — each one's root must equal the recomputed root at its size, and
   its signature must verify with the broker's keys (when keys are at hand).
4. **``--checkpoint FILE``** — the checkpoint's signature is verified first (local keys or
   ``--jwks``); then a consistency proof from its size to the current size, built from the
   recomputation alone, is checked against its signed root. Whoever kept only that checkpoint
   thus detects any edit, removal or reordering of an event it covers, even one done with raw
   SQL by someone who then recomputed the whole hash chain and the stored tree.
5. **Witness cosignatures** (``--witness-key VKEY``) — every stored cosignature by a known
   witness must verify over the checkpoint note of the *recomputed* root at its size (a witness
   that saw another root is evidence of a split view), and each known witness must have
   cosigned at least one checkpoint. Cosignatures by other keys are counted, not judged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.ledger.events import VerifyReport
from broker.ledger.store import Ledger
from broker.transparency import merkle
from broker.transparency.checkpoints import CheckpointError, stored_checkpoints, verify_checkpoint
from broker.transparency.note import Verifier, matching
from broker.transparency.signed_notes import StoredCosignature, check_cosignature, stored_cosignatures
from broker.transparency.tree import TreeReport, verify_tree


@dataclass
class ExtensionReport:
    """Is the ledger an append-only extension of the given checkpoint?"""
    ok: bool
    reason: str
    tree_size: int | None = None           # the checkpoint's
    root_hash: str | None = None
    ledger_size: int | None = None
    ledger_root: str | None = None
    forked: bool = False                   # evidence of rewritten history (vs. a bad checkpoint)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class IntegrityReport:
    chain: VerifyReport
    tree: TreeReport
    checkpoints_checked: int = 0
    signatures_checked: bool = False
    checkpoint_problems: list[str] = field(default_factory=list)
    extension: ExtensionReport | None = None
    cosignatures_verified: int = 0
    cosignatures_unknown: int = 0

    @property
    def ok(self) -> bool:
        return (self.chain.ok and self.tree.ok and not self.checkpoint_problems
                and (self.extension is None or self.extension.ok))

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``--json``; the top-level chain keys are kept for existing consumers."""
        first_bad = self.chain.first_bad_seq
        if first_bad is None and not self.tree.ok:
            first_bad = self.tree.first_bad_seq
        reason = self.chain.reason or self.tree.reason or "; ".join(self.checkpoint_problems)
        if not reason and self.extension is not None and not self.extension.ok:
            reason = self.extension.reason
        return {
            "ok": self.ok, "count": self.chain.count, "first_bad_seq": first_bad,
            "reason": reason,
            "chain": {"ok": self.chain.ok, "count": self.chain.count,
                      "first_bad_seq": self.chain.first_bad_seq, "reason": self.chain.reason},
            "tree": {"ok": self.tree.ok, "tree_size": self.tree.tree_size,
                     "ledger_size": self.tree.ledger_size,
                     "checked_nodes": self.tree.checked_nodes, "reason": self.tree.reason,
                     "first_bad_seq": self.tree.first_bad_seq,
                     "root_hash": _root_hex(self.tree, self.tree.ledger_size)},
            "checkpoints": {"checked": self.checkpoints_checked,
                            "signatures_checked": self.signatures_checked,
                            "problems": list(self.checkpoint_problems)},
            "checkpoint": self.extension.to_dict() if self.extension is not None else None,
            "cosignatures": {"verified": self.cosignatures_verified,
                             "unknown_keys": self.cosignatures_unknown},
        }


def _root_hex(tree: TreeReport, size: int) -> str | None:
    root = (tree.roots or {}).get(size)
    return root.hex() if root is not None else None


def verify_ledger(store: Ledger, *, keys: dict[str, Any] | None,
                  checkpoint: Any | None = None,
                  witnesses: Sequence[Verifier] = ()) -> IntegrityReport:
    """Run the four checks of the module docstring. ``keys`` is the JWKS to check signatures
    with (None or empty: stored checkpoints' signatures are not checked, and a ``checkpoint``
    cannot be verified); ``checkpoint`` is an unverified checkpoint document."""
    chain = store.verify()
    keys = keys if keys and keys.get("keys") else None
    trusted, extension = None, None
    if checkpoint is not None:
        if keys is None:
            extension = ExtensionReport(False, "no keys to verify the checkpoint's signature with"
                                        " (use --jwks)")
        else:
            try:
                trusted = verify_checkpoint(checkpoint, keys)
            except CheckpointError as exc:
                extension = ExtensionReport(False, f"checkpoint rejected: {exc}")
    with store.unavailable_on_error("verify tree"):
        cosignatures = stored_cosignatures(store.read)     # own read: the table may not exist
        with store.snapshot() as read:
            stored = list(stored_checkpoints(read))
            sizes = {c.tree_size for c in stored} | {c.tree_size for c in cosignatures}
            if trusted is not None:
                sizes.add(trusted.tree_size)
            tree = verify_tree(read, sizes=sizes,
                               proof_from=trusted.tree_size if trusted is not None else None)
    report = IntegrityReport(chain=chain, tree=tree, checkpoints_checked=len(stored),
                             signatures_checked=keys is not None, extension=extension)
    roots = tree.roots or {}
    for c in stored:
        label = f"stored checkpoint (size {c.tree_size}, {c.timestamp})"
        if c.tree_size > tree.ledger_size:
            report.checkpoint_problems.append(f"{label} covers more events than the ledger has"
                                              f" ({tree.ledger_size}): events were removed")
        elif c.tree_size in roots and roots[c.tree_size].hex() != c.root_hash:
            report.checkpoint_problems.append(f"{label}: the first {c.tree_size} events no longer"
                                              " hash to its root (history was rewritten)")
        if keys is not None:
            try:
                verify_checkpoint(c.to_dict(), keys)
            except CheckpointError as exc:
                report.checkpoint_problems.append(f"{label}: {exc}")
    if trusted is not None:
        report.extension = _check_extension(trusted, tree)
    _check_cosignatures(report, cosignatures, list(witnesses), tree)
    return report


def _check_cosignatures(report: IntegrityReport, cosignatures: list[StoredCosignature],
                        witnesses: list[Verifier], tree: TreeReport) -> None:
    roots = tree.roots or {}
    cosigned_by: set[tuple[str, bytes]] = set()
    for cosignature in cosignatures:
        if matching(cosignature.line, witnesses) is None:
            report.cosignatures_unknown += 1
            continue
        expected = roots.get(cosignature.tree_size) \
            if cosignature.tree_size <= tree.ledger_size else None
        problem = check_cosignature(cosignature, expected, witnesses)
        if problem is not None:
            report.checkpoint_problems.append(problem)
        else:
            report.cosignatures_verified += 1
            cosigned_by.add((cosignature.line.name, cosignature.line.key_id))
    for witness in witnesses:
        if (witness.name, witness.key_id) not in cosigned_by:
            report.checkpoint_problems.append(f"no valid cosignature by witness {witness.name}")


def _check_extension(trusted: Any, tree: TreeReport) -> ExtensionReport:
    size1, size2 = trusted.tree_size, tree.ledger_size
    roots = tree.roots or {}
    base = dict(tree_size=size1, root_hash=trusted.root_hash, ledger_size=size2,
                ledger_root=_root_hex(tree, size2))
    if size1 > size2:
        return ExtensionReport(False, f"the checkpoint covers {size1} events but the ledger has"
                               f" only {size2}: events were removed", forked=True, **base)
    if size1 not in roots or size2 not in roots or tree.consistency is None:
        return ExtensionReport(False, "the ledger could not be recomputed up to the checkpoint's"
                               f" size: {tree.reason}", **base)
    try:
        merkle.verify_consistency(size1, size2, tree.consistency, trusted.root, roots[size2])
    except merkle.ForkedLog:
        pass
    except merkle.InvalidProof:
        if roots[size1] == trusted.root:     # cannot happen for a correct recomputation
            return ExtensionReport(False, "consistency proof failed", **base)
    else:
        return ExtensionReport(True, f"the ledger ({size2} events) is an append-only extension"
                               f" of the checkpoint ({size1} events)", **base)
    return ExtensionReport(False, f"FORKED: the first {size1} events no longer hash to the"
                           " checkpoint's signed root: an event it covers was edited, removed"
                           " or reordered", forked=True, **base)
